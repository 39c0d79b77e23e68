--! use: breaker
-- breaker_snapshot: the shared state as it is now, for breaker.snapshot() and operators.
-- KEYS: S, P, B, R (see lua/lib/breaker.lua)
-- ARGV: [1..OP-1] the head (lua/lib/breaker.lua)
-- Reply: the breaker reply with wait_ms = time left open, verdict '', followed by the
--   reason {why, why_text, why_err, why_by, why_at} ('' / 0 if none) and the time
--   spent open including the current open period (ms).
-- Atomic because: the time window is advanced and read in one step; a key that does
-- not exist is reported as a fresh closed breaker and is not created.
local setup_error = breaker_setup(KEYS, ARGV)
if setup_error then return setup_error end
local now = now_ms(cfg.clock)
local s = load()
if s.err then return s end
if redis.call('EXISTS', S) == 1 then
  if cfg.wkind == 2 then tw_advance(s, math.floor(now / 1000)) end
  save(s, now, true)
end
local a = redis.call('HMGET', S, 'why', 'why_text', 'why_err', 'why_by', 'why_at', 'opened')
local open_total = s.open_ms
if s.st == 'open' or s.st == 'forced_open' then
  open_total = open_total + math.max(0, now - (tonumber(a[6]) or now))
end
local out = reply(s, '', remain(s, now))
for i = 1, 4 do out[#out + 1] = a[i] or '' end
out[#out + 1] = tonumber(a[5]) or 0
out[#out + 1] = open_total
return out
