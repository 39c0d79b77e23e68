--! use: tx
-- tx_ack: a participant reports its commit or rollback done.
-- KEYS[1]: the transaction's hash (see lib/tx.lua).
-- ARGV: [1] clock override, [2] channel, [3] txid, [4] participant.
-- Reply: the tx view; {"unknown"}, {"not_member"}, {"not_decided"} (nothing to ack
-- yet), {"corrupt", field, value} or {"noperm", ...}.
-- Atomic because an ack must count once (a retried ack changes nothing), and the last
-- one drops what only the dispatch needed.
local now, err = tx_now(ARGV[1])
if err then
  return err
end
local p = ARGV[4]
local s, e = tx_load()
if e then
  return e
end
if not s then
  return {'unknown'}
end
e = tx_participant(s, p)
if e then
  return e
end
tx_notice_deadline(s, now)
if s.outcome == 'pending' then
  return {'not_decided'}
end
if not s.member then
  return {'not_member'}
end
-- At most n acks count (in an unnamed set anyone may ack), so the counts stay valid.
if s.my_ack == 0 and s.acked < s.n then
  s.my_ack = 1
  s.acked = s.acked + 1
  tx_set(s, 'a:' .. p, '1')
  tx_set(s, 'acked', s.acked)
  if s.acked >= s.n then
    -- Everyone is done: the claim is no longer needed. The rest (decision, votes,
    -- members, acks, and the payload, which a participant that staged after the
    -- decision needs to run its rollback) stays until the TTL set at the decision.
    tx_set(s, 'claim', '')
  end
end
e = tx_write(s)
if e then
  return e
end
return tx_view('ok', s, now)
