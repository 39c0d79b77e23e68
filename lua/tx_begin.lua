--! use: clock, msgpack, tx
-- tx_begin: create a transaction's tally.
-- KEYS: see lib/tx.lua (meta, votes, members, decision, claim, dispatched).
-- ARGV: [1] clock override, [2] channel, [3] txid, [4] n participants, [5] timeout ms,
--       [6] keep ms (how long the decision outlives the tally), [7] payload (opaque
--       bytes for integrations, "" if none), [8] hint appended to a timeout's reason
--       when some never voted ("" if none), [9..] participant ids if the set is named.
-- Reply: the tx view (lib/tx.lua); code "exists" if the id is taken (tally or tombstone).
-- Atomic because the existence check and the creation must not interleave with a
-- second begin of the same id, and the deadline must be set from the same clock read.
local now = now_ms(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[4]) == 1 then
  return tx_view('exists', now, '')
end
local n, timeout, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local named = 0
if #ARGV > 8 then
  named = 1
  for i = 9, #ARGV, 500 do
    redis.call('SADD', KEYS[3], unpack(ARGV, i, math.min(i + 499, #ARGV)))
  end
  redis.call('PEXPIRE', KEYS[3], timeout + keep)
end
redis.call('HSET', KEYS[1], 'n', n, 'deadline', now + timeout, 'created', now, 'keep', keep,
  'named', named, 'payload', ARGV[7], 'hint', ARGV[8], 'yes', 0, 'no', 0)
redis.call('PEXPIRE', KEYS[1], timeout + keep)
return tx_view('ok', now, '')
