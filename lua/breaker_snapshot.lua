--! use: breaker
-- breaker_snapshot: the shared state as it is now, for breaker.snapshot() and operators.
-- KEYS: S, P, B, R (see lua/lib/breaker.lua)
-- ARGV: [1..OP-1] the head (lua/lib/breaker.lua)
-- Reply: the breaker reply with wait_ms = time left open, verdict '', followed by the
--   time spent open including the current open period (ms). The reason of the last
--   transition is in the state the reply carries.
-- Atomic because: the time window is advanced and read in one step; a key that does
-- not exist is reported as a fresh closed breaker and is not created.
local setup_error = breaker_setup(KEYS, ARGV)
if setup_error then return setup_error end
local now = clock()
local s = load()
if s.err then return s end
if s.exists then
  if cfg.wkind == 2 then tw_advance(s, math.floor(now / 1000)) end
  save(s, true)
end
local open_total = s.open_ms
if (s.st == 'open' or s.st == 'forced_open') and s.opened > 0 then
  open_total = open_total + math.max(0, now - s.opened)
end
local out = reply(s, '', remain(s))
out[#out + 1] = open_total
return out
