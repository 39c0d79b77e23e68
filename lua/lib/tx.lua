-- Shared helpers of the transaction scripts (tx_*.lua).
--
-- Every tx script takes the same KEYS, all under one hash tag:
--   KEYS[1] meta      hash: n, deadline, created, keep, named, payload, hint, yes, no
--   KEYS[2] votes     hash: participant -> "1" (yes) | "0" (no)
--   KEYS[3] members   set of participant ids (only when the set is named)
--   KEYS[4] decision  hash, the tombstone: outcome, kind, who, text, at, n, yes, no,
--                     deadline, acked, dispatched, and per acked participant
--                     "a:<participant>" and "v:<participant>" (its vote)
--   KEYS[5] claim     string: the token of whoever is dispatching handlers (PX lease)
--   KEYS[6] dispatched set of participants whose handler was sent
-- and the same first ARGV:
--   ARGV[1] clock override in ms ("" in production: use the server's TIME)
--   ARGV[2] pub/sub channel the decision is published on
--   ARGV[3] transaction id (echoed in the published message)
-- The tally keys (meta, votes, claim, dispatched) go away once every participant has
-- acked (members stays with the decision, so outsiders are still refused); the decision stays for `keep` ms, so a late or redelivered
-- vote finds the decision and can never start the tally again.

local function tx_num(v)
  return tonumber(v) or 0
end

-- The reply every tx script but tx_claim returns (see _txcore.parse_view):
-- {code, outcome, kind, who, text, at, n, yes, no, acked, deadline, now, my_vote, my_ack}
local function tx_view(code, now, participant)
  local d = redis.call('HMGET', KEYS[4], 'outcome', 'kind', 'who', 'text', 'at', 'n', 'yes',
    'no', 'acked', 'deadline')
  local outcome, kind, who, text, at = d[1] or 'pending', d[2] or '', d[3] or '', d[4] or '', tx_num(d[5])
  local n, yes, no, deadline = tx_num(d[6]), tx_num(d[7]), tx_num(d[8]), tx_num(d[10])
  local acked = tx_num(d[9])
  local m = redis.call('HMGET', KEYS[1], 'n', 'yes', 'no', 'deadline')
  if m[1] then
    n, yes, no, deadline = tx_num(m[1]), tx_num(m[2]), tx_num(m[3]), tx_num(m[4])
  end
  local my_vote, my_ack = '', 0
  if participant ~= nil and participant ~= '' then
    my_vote = redis.call('HGET', KEYS[2], participant) or redis.call('HGET', KEYS[4], 'v:' .. participant) or ''
    if redis.call('HEXISTS', KEYS[4], 'a:' .. participant) == 1 then
      my_ack = 1
    end
  end
  return {code, outcome, kind, who, text, at, n, yes, no, acked, deadline, now, my_vote, my_ack}
end

-- Record the decision once, keep it for `keep` ms, and publish it.
local function tx_decide(outcome, kind, who, text, now)
  local m = redis.call('HMGET', KEYS[1], 'n', 'yes', 'no', 'deadline', 'keep')
  local keep = tx_num(m[5])
  redis.call('HSET', KEYS[4], 'outcome', outcome, 'kind', kind, 'who', who, 'text', text,
    'at', now, 'n', tx_num(m[1]), 'yes', tx_num(m[2]), 'no', tx_num(m[3]),
    'deadline', tx_num(m[4]), 'acked', 0, 'dispatched', 0)
  redis.call('PEXPIRE', KEYS[4], keep)
  for i = 1, 3 do
    if redis.call('EXISTS', KEYS[i]) == 1 then
      redis.call('PEXPIRE', KEYS[i], keep)
    end
  end
  redis.call('PUBLISH', ARGV[2], mp_array({ARGV[3], outcome, kind, who, text, now,
    tx_num(m[1]), tx_num(m[2]), tx_num(m[3]), tx_num(m[4])}))
end

-- Decide ROLLBACK if the deadline has passed without a decision. Returns true if the
-- transaction is (now) decided.
local function tx_check_deadline(now)
  if redis.call('EXISTS', KEYS[4]) == 1 then
    return true
  end
  local m = redis.call('HMGET', KEYS[1], 'n', 'yes', 'no', 'deadline', 'hint')
  if not m[1] then
    return false
  end
  if now >= tx_num(m[4]) then
    local n, yes, no = tx_num(m[1]), tx_num(m[2]), tx_num(m[3])
    local text = string.format('deadline passed with %d of %d voted yes, %d no, %d never voted',
      yes, n, no, n - yes - no)
    -- The hint (given at begin) explains a likely cause of votes that never came.
    if n - yes - no > 0 and m[5] and m[5] ~= '' then
      text = text .. '; ' .. m[5]
    end
    tx_decide('rollback', 'timeout', '', text, now)
    return true
  end
  return false
end
