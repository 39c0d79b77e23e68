--! use: outcomes
-- breaker_flush: breaker_report for many breakers in one call: a process's background
-- sync sends all its due breakers at once (redisbreaker/syncer.py). Each breaker is
-- its own step, as if reported alone: its checks run before its writes, and an error
-- in one (e.g. a corrupt key) is that breaker's answer and leaves the others done.
-- The call is a transport, not a transaction across breakers. On one server only: a
-- Redis Cluster refuses keys of several slots in one script, so there each breaker
-- goes alone (its keys share one slot), in one pipeline per master.
-- KEYS: S, P, B, R of each breaker in turn (4 per breaker)
-- ARGV: [1] how many breakers, n; then per breaker: its argument count k, then those
--   k arguments: breaker_report's ARGV (the head and the batch)
-- Reply: n entries in order, each breaker_report's reply or that breaker's error reply.
-- Atomic because: each breaker's step is breaker_report's, which must be one step.
local n = tonumber(ARGV[1])
if not n or #KEYS ~= 4 * n then
  return redis.error_reply('ERR breaker_flush: ' .. #KEYS .. ' keys for ' .. tostring(ARGV[1])
    .. ' breakers (4 each)')
end
-- Check the layout before the first breaker's step, so a bad call changes nothing.
local starts, at = {}, 2
for i = 1, n do
  local k = tonumber(ARGV[at])
  if not k or k < OP - 1 or at + k > #ARGV then
    return redis.error_reply('ERR breaker_flush: breaker ' .. i .. ' has a bad argument count')
  end
  starts[i], at = at, at + k + 1
end
if at ~= #ARGV + 1 then
  return redis.error_reply('ERR breaker_flush: ' .. (#ARGV - at + 1) .. ' arguments left over')
end
-- TIME is read once, by the first breaker whose step needs it, and shared.
local now, out = nil, {}
for i = 1, n do
  local first = starts[i]
  local argv = { unpack(ARGV, first + 1, first + tonumber(ARGV[first])) }
  out[i] = report({ KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i] }, argv, now)
  -- (a reply is the state alone, or an array, or an error)
  if now == nil and not (type(out[i]) == 'table' and out[i].err) then now = server_clock() end
end
return out
