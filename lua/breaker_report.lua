--! use: outcomes
-- breaker_report: record a process's outcomes, in the order they completed. Also the
-- explicit sync(): it reads the state and never takes a half-open permit.
-- KEYS: S, P, B, R (see lua/lib/breaker.lua)
-- ARGV: [1..OP-1] the head; [OP..] the batch, runs of four (see lua/lib/outcomes.lua);
--   an empty batch only reads the state
-- Reply: the breaker reply, wait_ms = time left open, verdict ''.
-- Atomic because: counting, the trip decision and the transition must happen as one
-- step, so concurrent failures never lose an update and only one of them trips.
local setup_error = breaker_setup(KEYS, ARGV)
if setup_error then return setup_error end
local bad = check_batch(OP)
if bad then return redis.error_reply(bad) end
local now = now_ms(cfg.clock)
local s = load(true)
if s.err then return s end
if cfg.wkind == 2 then tw_advance(s, math.floor(now / 1000)) end
apply_batch(s, OP, now)
save(s, now)
return reply(s, '', remain(s, now))
