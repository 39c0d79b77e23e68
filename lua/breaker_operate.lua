--! use: breaker
-- breaker_operate: an operator's command, applied cluster-wide.
-- KEYS: S, P, B, R (see lua/lib/breaker.lua)
-- ARGV: [1..OP-1] the head (ARGV[7] the operator, ARGV[8] the reason, '' if none);
--   [OP] command: 'force_open' | 'disable' | 'reset' | 'open';
--   [OP+1] for 'open': how long to stay open, in ms (a manual pause that ends in half-open)
-- Reply: the breaker reply, verdict ''.
-- Atomic because: the state change, the cleared counters, the recorded reason and the
-- published event must be seen together by every worker.
local setup_error = breaker_setup(KEYS, ARGV)
if setup_error then return setup_error end
local cmd = ARGV[OP]
local ms = tonumber(ARGV[OP + 1])
if cmd ~= 'force_open' and cmd ~= 'disable' and cmd ~= 'reset' and cmd ~= 'open' then
  return redis.error_reply('ERR unknown breaker command ' .. tostring(cmd))
end
if cmd == 'open' and (not ms or ms < 1) then
  return redis.error_reply('ERR breaker open needs a duration in ms, got ' .. tostring(ARGV[OP + 1]))
end
local s = load(true)
if s.err then return s end
local note = head_note()
local text = cmd .. ((cmd == 'open') and (' for ' .. (ms / 1000) .. 's') or '') .. ' by '
  .. head_who()
if note ~= '' then text = text .. ': ' .. note end
if cmd == 'force_open' then
  if s.st ~= 'forced_open' then transition(s, 'forced_open', nil, 'operator', text) end
elseif cmd == 'disable' then
  if s.st ~= 'disabled' then transition(s, 'disabled', nil, 'operator', text) end
elseif cmd == 'reset' then
  if s.st ~= 'closed' then
    transition(s, 'closed', nil, 'operator', text)
  else
    win_reset(s)
    s.consec = 0
  end
  s.trips = 0
elseif cmd == 'open' then
  transition(s, 'open', ms, 'operator', text)
end
-- A command that changes nothing (reset of a closed breaker, force_open of a forced
-- one) is still the last word on why the breaker is as it is.
if transition_why == '' then audit(s, 'operator', text, '') end
save(s)
return reply(s, '', remain(s))
