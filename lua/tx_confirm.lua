--! use: tx
-- tx_confirm: the first half of making a commit safe to act on (opt-in,
-- ``commit_replicas``; redisbreaker/tx_api.py). Redis replicates asynchronously: a
-- master that decided COMMIT and dies before a replica has it takes the decision with
-- it, the promoted replica still has the transaction pending, and its deadline then
-- rolls it back while someone may have committed. So a commit is handed to the user
-- only once replicas have it: this script writes (after the decision, so replicas
-- that acknowledge this write have the decision too) and the caller then sends WAIT
-- on the same connection.
-- KEYS[1] the transaction's hash. ARGV: the tx head (lua/lib/tx.lua), unused.
-- Reply: 1 if the transaction is committed here (and the write was made), else 0 (it
--   is not: gone, or this node never had the commit).
-- Atomic because: the check and the write must see the same outcome; the write stores
--   the value already there, so it changes nothing but the replication stream.
local outcome = redis.call('HGET', KEYS[1], 'outcome')
if outcome ~= 'commit' then
  return 0
end
redis.call('HSET', KEYS[1], 'outcome', 'commit')
return 1
