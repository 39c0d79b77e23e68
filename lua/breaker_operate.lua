--! use: breaker
-- breaker_operate: an operator's command, applied cluster-wide.
-- KEYS: S, P, B, R (see lua/lib/breaker.lua)
-- ARGV: [1..18] config; [OP] command: 'force_open' | 'disable' | 'reset' | 'open';
--   [OP+1] for 'open': how long to stay open, in ms (a manual pause that ends in half-open)
-- Reply: the breaker reply, verdict ''.
-- Atomic because: the state change, the cleared counters and the published event
-- must be seen together by every worker.
local now = now_ms(cfg.clock)
local s = load()
if s.err then return s end
local cmd = ARGV[OP]
if cmd == 'force_open' then
  if s.st ~= 'forced_open' then transition(s, 'forced_open', now) end
elseif cmd == 'disable' then
  if s.st ~= 'disabled' then transition(s, 'disabled', now) end
elseif cmd == 'reset' then
  if s.st ~= 'closed' then transition(s, 'closed', now) else win_reset(s); s.consec = 0 end
  s.trips = 0
elseif cmd == 'open' then
  transition(s, 'open', now, tonumber(ARGV[OP + 1]))
else
  return redis.error_reply('ERR unknown breaker command ' .. tostring(cmd))
end
save(s, now)
return reply(s, '', remain(s, now))
