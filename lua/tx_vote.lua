--! use: clock, msgpack, tx
-- tx_vote: record one participant's vote and decide if it is decisive.
-- KEYS: see lib/tx.lua (meta, votes, members, decision, claim, dispatched).
-- ARGV: [1] clock override, [2] channel, [3] txid, [4] participant, [5] "1" yes / "0" no,
--       [6] reason (text, "" if none).
-- Reply: the tx view; code "unknown" (no such transaction) or "not_member" (the set is
-- named and the participant is not in it). my_vote is the vote on record, which is
-- the first one: a participant cannot change its vote.
-- Atomic because the first-vote-wins check, the count and the decision must see one
-- state: two last votes arriving together must not both (or neither) decide.
local now = now_ms(ARGV[1])
local p = ARGV[4]
local m = redis.call('HMGET', KEYS[1], 'n', 'named')
if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('SISMEMBER', KEYS[3], p) == 0 then
  return tx_view('not_member', now, p)
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return tx_view('ok', now, p)
end
if not m[1] then
  return tx_view('unknown', now, p)
end
if tx_check_deadline(now) then
  return tx_view('ok', now, p)
end
if redis.call('HSETNX', KEYS[2], p, ARGV[5]) == 1 then
  redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]))
  if ARGV[5] == '1' then
    local yes = redis.call('HINCRBY', KEYS[1], 'yes', 1)
    if yes >= tonumber(m[1]) then
      tx_decide('commit', 'votes', '', string.format('all %d participants voted yes', yes), now)
    end
  else
    redis.call('HINCRBY', KEYS[1], 'no', 1)
    local text = ARGV[6]
    if text == '' then
      text = 'voted no'
    end
    tx_decide('rollback', 'vote', p, text, now)
  end
end
return tx_view('ok', now, p)
