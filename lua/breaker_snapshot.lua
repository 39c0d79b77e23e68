--! use: breaker
-- breaker_snapshot: the shared state as it is now, for breaker.snapshot().
-- KEYS: S, P, B, R (see lua/lib/breaker.lua)
-- ARGV: [1..18] config
-- Reply: the breaker reply with wait_ms = time left open, verdict ''.
-- Atomic because: the time window is advanced and read in one step; a key that does
-- not exist is reported as a fresh closed breaker and is not created.
local now = now_ms(cfg.clock)
local s = load()
if s.err then return s end
if redis.call('EXISTS', S) == 1 then
  if cfg.wkind == 2 then tw_advance(s, math.floor(now / 1000)) end
  save(s, now, true)
end
return reply(s, '', remain(s, now))
