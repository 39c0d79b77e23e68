--! use: clock, msgpack, publish
-- Shared helpers of the transaction scripts (tx_*.lua).
--
-- A transaction is ONE hash, KEYS[1]. Eviction takes a key whole, so the counts, the
-- votes, the members and the decision go together or not at all: a vote hash evicted
-- apart from its counts would let a redelivered vote count twice, and a members set
-- evicted apart from the tally would let anyone vote. The hash has no TTL while it is
-- pending, so volatile-* eviction policies never take a live transaction; the
-- decision gives it its TTL (`keep` ms). Fields:
--   TX_FIELDS (always all present): n deadline created keep named payload hint token
--     yes no acked outcome kind who text at claim claim_until dispatched ndisp
--   per participant: m:<p> (member, named sets only), v:<p> "1"|"0" (its vote),
--     a:<p> (acked), d:<p> (its handler was dispatched, callback mode)
-- so HLEN is always #TX_FIELDS + members + yes + no + acked + ndisp; any other count
-- means fields were removed or added behind our back, and the state is refused.
-- Every script takes the same ARGV head:
--   ARGV[1] clock override in ms ("" in production: use the server's TIME)
--   ARGV[2] pub/sub channel the decision is published on
--   ARGV[3] transaction id (echoed in the published message)
-- Scripts read and validate everything, then write: one HSET of the changed fields
-- (a deciding script publishes just before it, see tx_write), so a script that
-- refuses has written nothing.

local TX_FIELDS = {'n', 'deadline', 'created', 'keep', 'named', 'payload', 'hint', 'token',
  'yes', 'no', 'acked', 'outcome', 'kind', 'who', 'text', 'at', 'claim', 'claim_until',
  'dispatched', 'ndisp'}
-- 15 decimal digits are exact in a Lua number (a double); ms timestamps need 13.
local TX_MAX = 999999999999999
local TX_OUTCOMES = {pending = true, commit = true, rollback = true}

local function tx_bad(field, value)
  error({field, value}, 0)
end

local function tx_int(field, v, lo, hi)
  if type(v) ~= 'string' then
    tx_bad(field, '(missing)')
  end
  if #v > 15 or not string.match(v, '^%d+$') then
    tx_bad(field, v)
  end
  local x = tonumber(v)
  if x < lo or x > hi then
    tx_bad(field, v)
  end
  return x
end

local function tx_str(field, v)
  if type(v) ~= 'string' then
    tx_bad(field, '(missing)')
  end
  return v
end

-- The clock, refusing a malformed override instead of computing with nil.
local function tx_now(override)
  if override ~= '' and (#override > 15 or not string.match(override, '^%d+$')) then
    return nil, {'corrupt', 'clock override', override}
  end
  return now_ms(override), nil
end

local function tx_parse(raw)
  local s = {}
  s.n = tx_int('n', raw[1], 1, TX_MAX)
  s.deadline = tx_int('deadline', raw[2], 0, TX_MAX)
  s.created = tx_int('created', raw[3], 0, TX_MAX)
  s.keep = tx_int('keep', raw[4], 1, TX_MAX)
  s.named = tx_int('named', raw[5], 0, 1)
  s.payload = tx_str('payload', raw[6])
  s.hint = tx_str('hint', raw[7])
  s.token = tx_str('token', raw[8])
  s.yes = tx_int('yes', raw[9], 0, s.n)
  s.no = tx_int('no', raw[10], 0, s.n - s.yes)
  s.acked = tx_int('acked', raw[11], 0, s.n)
  s.outcome = tx_str('outcome', raw[12])
  if not TX_OUTCOMES[s.outcome] then
    tx_bad('outcome', s.outcome)
  end
  s.kind = tx_str('kind', raw[13])
  s.who = tx_str('who', raw[14])
  s.text = tx_str('text', raw[15])
  s.at = tx_int('at', raw[16], 0, TX_MAX)
  s.claim = tx_str('claim', raw[17])
  s.claim_until = tx_int('claim_until', raw[18], 0, TX_MAX)
  s.dispatched = tx_int('dispatched', raw[19], 0, 1)
  s.ndisp = tx_int('ndisp', raw[20], 0, s.n)
  -- The counts must agree with the outcome: one no decides, n yes decide.
  if s.outcome == 'pending' and (s.yes >= s.n or s.no > 0 or s.acked > 0) then
    tx_bad('outcome', string.format('pending with %d yes, %d no, %d acked of %d',
      s.yes, s.no, s.acked, s.n))
  end
  if s.outcome == 'commit' and (s.yes ~= s.n or s.no > 0) then
    tx_bad('outcome', string.format('commit with %d yes, %d no of %d', s.yes, s.no, s.n))
  end
  return s
end

-- The transaction's state, validated; nil if it does not exist; or nil and an error
-- reply {'corrupt', field, value}.
local function tx_load()
  local t = redis.call('TYPE', KEYS[1])
  t = t['ok'] or t
  if t == 'none' then
    return nil, nil
  end
  if t ~= 'hash' then
    return nil, {'corrupt', 'type', t}
  end
  local raw = redis.call('HMGET', KEYS[1], unpack(TX_FIELDS))
  local ok, s = pcall(tx_parse, raw)
  if not ok then
    if type(s) == 'table' then
      return nil, {'corrupt', s[1], s[2]}
    end
    return nil, {'corrupt', 'state', tostring(s)}
  end
  local members = 0
  if s.named == 1 then
    members = s.n
  end
  local expected = #TX_FIELDS + members + s.yes + s.no + s.acked + s.ndisp
  local len = redis.call('HLEN', KEYS[1])
  if len ~= expected then
    return nil, {'corrupt', 'fields', string.format('%d fields where the counts make %d',
      len, expected)}
  end
  s.set = {}
  s.decided_now = false
  return s, nil
end

-- Read participant p's membership, vote and ack into s; an error reply if malformed.
local function tx_participant(s, p)
  local f = redis.call('HMGET', KEYS[1], 'm:' .. p, 'v:' .. p, 'a:' .. p)
  s.member = s.named == 0 or f[1] == '1'
  s.my_vote = f[2] or ''
  if s.my_vote ~= '' and s.my_vote ~= '1' and s.my_vote ~= '0' then
    return {'corrupt', 'v:' .. p, s.my_vote}
  end
  s.my_ack = 0
  if f[3] then
    s.my_ack = 1
  end
  return nil
end

-- Queue a field for the one HSET of tx_write.
local function tx_set(s, field, value)
  s.set[#s.set + 1] = field
  s.set[#s.set + 1] = value
end

-- Decide (in memory; tx_write records and publishes it).
local function tx_decide(s, outcome, kind, who, text, now)
  s.outcome, s.kind, s.who, s.text, s.at = outcome, kind, who, text, now
  s.decided_now = true
  for _, f in ipairs({'outcome', 'kind', 'who', 'text', 'at'}) do
    tx_set(s, f, s[f])
  end
end

-- Decide ROLLBACK if the deadline has passed while pending.
local function tx_notice_deadline(s, now)
  if s.outcome ~= 'pending' or now < s.deadline then
    return
  end
  local missing = s.n - s.yes - s.no
  local text = string.format('deadline passed with %d of %d voted yes, %d no, %d never voted',
    s.yes, s.n, s.no, missing)
  -- The hint (given at begin) explains a likely cause of votes that never came.
  if missing > 0 and s.hint ~= '' then
    text = text .. '; ' .. s.hint
  end
  tx_decide(s, 'rollback', 'timeout', '', text, now)
end

-- Apply what the script queued. Returns nil, or an error reply when nothing was written.
-- A decision is published BEFORE the state is written, right after a write that
-- changes nothing: Redis refuses a script's first write when it is out of memory, and
-- never a later one, so that no-op write takes the memory check while nothing has
-- changed; the publish (denied by ACL, e.g.: asked up front where Redis can tell, else
-- refused by the publish itself) fails while nothing has changed; and the real HSET
-- after them cannot be refused. Subscribers act on the message only after the script
-- has finished, when the state is there.
local function tx_write(s)
  if s.decided_now then
    local refused = publish_refused(ARGV[2])
    if refused then return {'noperm', publish_cmd(ARGV[2]) .. ' ' .. ARGV[2], refused['err']} end
    -- Only a pending transaction is decided, so this writes what is already there.
    redis.call('HSET', KEYS[1], 'outcome', 'pending')
    refused = try_publish(ARGV[2], mp_array({ARGV[3], s.outcome, s.kind, s.who,
      s.text, s.at, s.n, s.yes, s.no, s.deadline}))
    if refused then return {'noperm', publish_cmd(ARGV[2]) .. ' ' .. ARGV[2], refused['err']} end
  end
  -- unpack() is bounded by the Lua stack, so long lists go in chunks; every chunk is the
  -- same command on the same key, so once the first is accepted the rest are too.
  for i = 1, #s.set, 1000 do
    redis.call('HSET', KEYS[1], unpack(s.set, i, math.min(i + 999, #s.set)))
  end
  if s.decided_now then
    redis.pcall('PEXPIRE', KEYS[1], s.keep)
  end
  return nil
end

-- The reply of every tx script but tx_claim, tx_dispatched and tx_payload (parsed by
-- redisbreaker/tx_core.py parse_view):
-- {code, outcome, kind, who, text, at, n, yes, no, acked, deadline, now, my_vote, my_ack}
local function tx_view(code, s, now)
  return {code, s.outcome, s.kind, s.who, s.text, s.at, s.n, s.yes, s.no, s.acked,
    s.deadline, now, s.my_vote or '', s.my_ack or 0}
end
