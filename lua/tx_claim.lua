--! use: clock, msgpack, tx
-- tx_claim: take the right to dispatch the decided transaction's handlers.
-- KEYS: see lib/tx.lua (meta, votes, members, decision, claim, dispatched).
-- ARGV: [1] clock override, [2] channel, [3] txid, [4] claim token, [5] lease ms.
-- Reply: {code, granted 0|1, outcome, payload, participant...}: code "unknown",
-- "not_decided", "done" (every handler already sent) or "ok"; when granted, the
-- participants whose handler has not been sent yet follow.
-- Atomic because only one process may hold the claim at a time (SET NX PX), and the
-- claim must only be granted for a decided transaction with handlers still to send;
-- a claimer that dies loses the claim when the lease runs out.
local now = now_ms(ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return {'unknown', 0, 'pending', ''}
  end
  if not tx_check_deadline(now) then
    return {'not_decided', 0, 'pending', ''}
  end
end
local outcome = redis.call('HGET', KEYS[4], 'outcome')
if redis.call('HGET', KEYS[4], 'dispatched') == '1' or redis.call('EXISTS', KEYS[1]) == 0 then
  return {'done', 0, outcome, ''}
end
local payload = redis.call('HGET', KEYS[1], 'payload') or ''
if not redis.call('SET', KEYS[5], ARGV[4], 'NX', 'PX', tonumber(ARGV[5])) then
  return {'ok', 0, outcome, payload}
end
local reply = {'ok', 1, outcome, payload}
for _, p in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if redis.call('SISMEMBER', KEYS[6], p) == 0 then
    reply[#reply + 1] = p
  end
end
return reply
