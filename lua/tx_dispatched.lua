--! use: clock, msgpack, tx
-- tx_dispatched: record that the claim holder sent these participants' handlers.
-- KEYS: see lib/tx.lua (meta, votes, members, decision, claim, dispatched).
-- ARGV: [1] clock override, [2] channel, [3] txid, [4] claim token, [5] lease ms,
--       [6..] participants just dispatched.
-- Reply: {held 0|1, done 0|1}: held is 0 when the claim was lost (lease ran out and
-- another process took it); done is 1 once every participant's handler is sent.
-- Atomic because the record must only be written by the current claim holder, and the
-- lease is extended in the same step so a slow but live dispatcher keeps its claim.
if redis.call('GET', KEYS[5]) ~= ARGV[4] then
  return {0, 0}
end
if #ARGV > 5 then
  redis.call('SADD', KEYS[6], unpack(ARGV, 6))
  redis.call('PEXPIRE', KEYS[6], math.max(redis.call('PTTL', KEYS[4]), 1))
end
if redis.call('SCARD', KEYS[6]) >= redis.call('SCARD', KEYS[3]) then
  redis.call('HSET', KEYS[4], 'dispatched', 1)
  redis.call('DEL', KEYS[5])
  return {1, 1}
end
redis.call('PEXPIRE', KEYS[5], tonumber(ARGV[5]))
return {1, 0}
