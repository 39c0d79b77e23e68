--! use: tx
-- tx_claim: take the right to dispatch the decided transaction's handlers.
-- KEYS[1]: the transaction's hash (see lib/tx.lua).
-- ARGV: [1] clock override, [2] channel, [3] txid, [4] claim token, [5] lease ms.
-- Reply: {code, granted 0|1, outcome, payload, participant...}: code "unknown",
-- "not_decided", "done" (every handler already sent, or everyone acked) or "ok"; when
-- granted, the participants whose handler has not been sent yet follow. Or
-- {"corrupt", field, value} / {"noperm", ...}.
-- Atomic because only one process may hold the claim at a time, and the claim must
-- only be granted for a decided transaction with handlers still to send; a claimer
-- that dies loses the claim when the lease runs out. The holder asking again (a retry
-- after a lost reply) is granted again.
local now, err = tx_now(ARGV[1])
if err then
  return err
end
local token, lease = ARGV[4], tonumber(ARGV[5])
if token == '' or not lease or lease < 1 or lease > TX_MAX then
  return {'bad_arg', 'claim', token .. ' ' .. ARGV[5]}
end
local s, e = tx_load()
if e then
  return e
end
if not s then
  return {'unknown', 0, 'pending', ''}
end
tx_notice_deadline(s, now)
if s.outcome == 'pending' then
  return {'not_decided', 0, 'pending', ''}
end
local reply
if s.dispatched == 1 or s.acked >= s.n then
  reply = {'done', 0, s.outcome, ''}
elseif s.claim ~= '' and s.claim ~= token and s.claim_until > now then
  reply = {'ok', 0, s.outcome, s.payload}
else
  tx_set(s, 'claim', token)
  tx_set(s, 'claim_until', now + lease)
  reply = {'ok', 1, s.outcome, s.payload}
  local sent = {}
  local names = redis.call('HKEYS', KEYS[1])
  for _, f in ipairs(names) do
    if string.sub(f, 1, 2) == 'd:' then
      sent[string.sub(f, 3)] = true
    end
  end
  for _, f in ipairs(names) do
    if string.sub(f, 1, 2) == 'm:' and not sent[string.sub(f, 3)] then
      reply[#reply + 1] = string.sub(f, 3)
    end
  end
end
e = tx_write(s)
if e then
  return e
end
return reply
