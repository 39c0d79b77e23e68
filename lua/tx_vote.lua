--! use: tx
-- tx_vote: record one participant's vote and decide if it is decisive.
-- KEYS[1]: the transaction's hash (see lib/tx.lua).
-- ARGV: [1] clock override, [2] channel, [3] txid, [4] participant, [5] "1" yes / "0" no,
--       [6] reason (text, "" if none).
-- Reply: the tx view; {"unknown"} (no such transaction), {"not_member"} (the set is
-- named and the participant is not in it), {"corrupt", field, value}, {"noperm", ...}.
-- my_vote is the vote on record, which is the first one: a participant cannot change
-- its vote, so the same vote sent again (a retry after a lost reply) changes nothing.
-- Atomic because the first-vote-wins check, the count and the decision must see one
-- state: two last votes arriving together must not both (or neither) decide.
local now, err = tx_now(ARGV[1])
if err then
  return err
end
local p, ok = ARGV[4], ARGV[5]
if ok ~= '1' and ok ~= '0' then
  return {'bad_arg', 'ok', ok}
end
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
if not s.member then
  return {'not_member'}
end
tx_notice_deadline(s, now)
if s.outcome == 'pending' and s.my_vote == '' then
  s.my_vote = ok
  tx_set(s, 'v:' .. p, ok)
  if ok == '1' then
    s.yes = s.yes + 1
    tx_set(s, 'yes', s.yes)
    if s.yes >= s.n then
      tx_decide(s, 'commit', 'votes', '', string.format('all %d participants voted yes', s.yes), now)
    end
  else
    s.no = s.no + 1
    tx_set(s, 'no', s.no)
    local text = ARGV[6]
    if text == '' then
      text = 'voted no'
    end
    tx_decide(s, 'rollback', 'vote', p, text, now)
  end
end
e = tx_write(s)
if e then
  return e
end
return tx_view('ok', s, now)
