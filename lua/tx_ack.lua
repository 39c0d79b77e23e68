--! use: clock, msgpack, tx
-- tx_ack: a participant reports its commit or rollback done; the last ack cleans up.
-- KEYS: see lib/tx.lua (meta, votes, members, decision, claim, dispatched).
-- ARGV: [1] clock override, [2] channel, [3] txid, [4] participant.
-- Reply: the tx view; code "unknown", "not_member" or "not_decided" (nothing to ack yet).
-- Atomic because the ack count decides the cleanup: two last acks together must delete
-- the tally exactly once, and an ack must never count twice.
local now = now_ms(ARGV[1])
local p = ARGV[4]
if redis.call('EXISTS', KEYS[4]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return tx_view('unknown', now, p)
  end
  if not tx_check_deadline(now) then
    return tx_view('not_decided', now, p)
  end
end
if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('SISMEMBER', KEYS[3], p) == 0 then
  return tx_view('not_member', now, p)
end
if redis.call('HSETNX', KEYS[4], 'a:' .. p, '1') == 1 then
  -- The vote on record moves into the tombstone, so a redelivered participant still
  -- learns its own vote after the tally is gone.
  local vote = redis.call('HGET', KEYS[2], p)
  if vote then
    redis.call('HSET', KEYS[4], 'v:' .. p, vote)
  end
  local acked = redis.call('HINCRBY', KEYS[4], 'acked', 1)
  local n = tonumber(redis.call('HGET', KEYS[4], 'n'))
  if acked >= n then
    local view = tx_view('ok', now, p)
    -- members stays (it expires with the decision) so outsiders are still refused.
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[5], KEYS[6])
    return view
  end
end
return tx_view('ok', now, p)
