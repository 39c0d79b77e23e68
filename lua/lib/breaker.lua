--! use: clock, msgpack, publish
-- Shared state machine of one circuit breaker. Every breaker script starts with
-- `--! use: breaker` (or a library that uses it), so this text is part of each of them.
--
-- KEYS (all share the breaker's hash tag):
--   KEYS[1] S  hash   the state, one field each:
--                     st      closed | open | half_open | forced_open | disabled
--                     gen     generation: +1 on every transition (outcomes of an
--                             older generation are dropped)
--                     until   open: when the open period ends (server ms)
--                     trips   trips since the breaker last closed (drives the backoff)
--                     consec  consecutive failures in the closed state
--                     hs      half-open trial successes so far
--                     n wf ws calls, failures and slow calls in the window
--                     h       count window: the next ring slot to write
--                     wsec    time window: the newest second counted
--                     ct cf cs time window: running totals of calls, failures, slow
--                     wk      window kind:size:layout the counts belong to
--                     cfg     the settings of the process that wrote last (ARGV[5..18])
--                     n_ok n_fail n_slow n_ign n_np  fleet-wide totals of calls that
--                             succeeded, failed, were slow, were ignored, were refused
--                             (not permitted), whatever the generation
--                     n_trips automatic trips ever; open_ms time spent open (ended periods)
--                     why why_text why_err why_by why_at  the last transition's reason
--                             (rule, text, the failure that made it, who, when), written
--                             by transition() and read only by breaker_snapshot
--                     opened  when the current open period began (server ms)
--   KEYS[2] P  zset   half-open permits: member = caller's token, score = lease expiry (ms)
--   KEYS[3] B  zset   time-window buckets, one per second that recorded something:
--                     score = the second, member = '<second>:<ct>:<cf>:<cs>', the running
--                     totals (calls, failures, slow) up to the end of that second
--   KEYS[4] R  string count-window ring, one byte per slot ('0'..'3'; a slot past the
--                     end of the string is empty); the next slot to write is S.h
-- A recorded outcome costs O(1) commands and bytes whatever the window size (a batch
-- of m pending successes: O(min(m, size)) bytes). B and R exist only while the window
-- holds something (n > 0); S.wk names the window and the storage layout, and a key
-- written for another window (or by an older layout) starts an empty window.
-- ARGV[1..OP-1] is the call's head (see breaker_setup below); ARGV[OP..] belong to the
-- operation.
--
-- Outcome codes: '0' success, '1' failure, '2' slow success, '3' slow failure,
-- 'x' ignored (releases a permit, records nothing).
-- redisbreaker/model.py is the same machine in Python; the test suite checks that the
-- two agree step by step, so a change here must be made there too.
--
-- The same text runs two ways (redisbreaker/scripts.py): as one EVAL script per
-- operation (Redis 6.2, fakeredis), or, on Redis 7+, as one Redis Functions library
-- loaded once, each operation an FCALL. So nothing here reads KEYS or ARGV at load
-- time: every call starts with breaker_setup(KEYS, ARGV), which sets the per-call
-- values below. Under FCALL the library's locals live on between calls, which is
-- what the settings cache uses; everything per call is set again by breaker_setup.

-- The call's head: ARGV[1] clock override ('' = TIME); ARGV[2] uniform [0, 1) from the
-- caller for the jitter (Redis seeds math.random alike in every script); ARGV[3] the
-- event channel; ARGV[4] the event prefix (msgpack: array header, breaker name, origin
-- id); ARGV[5] the settings' fingerprint; ARGV[6] the settings text (14 numbers joined
-- by ',', redisbreaker/options.py `BreakerOptions.settings_text`), or '' when the
-- caller expects this library to know the fingerprint already; ARGV[7] who calls
-- (host:pid, or the operator); ARGV[8] a note: the last failure this call reports
-- ('Class: message'), or the operator's reason. An operation's own arguments start at
-- ARGV[OP].
local OP = 9
local S, P, B, R, ARGS
local cfg, WK, MINE
local transition_from, transition_why

-- Parsed settings by fingerprint. Under EVAL this is new for every call (the caller
-- always sends the text); under FCALL it lives as long as the library, so a recorded
-- outcome sends 8 short arguments instead of 22 and parses nothing. Bounded: a fleet
-- has few distinct settings, and the cache starts over past SETTINGS_MAX.
local SETTINGS, SETTINGS_N, SETTINGS_MAX = {}, 0, 1000

local function parse_settings(text)
  local v = {}
  for x in string.gmatch(text, '[^,]+') do v[#v + 1] = x end
  if #v ~= 14 then return nil end
  local c = {
    fail_max = tonumber(v[1]),
    wkind = tonumber(v[2]),     -- 0 none, 1 count-based, 2 time-based
    wsize = tonumber(v[3]),     -- calls, or seconds
    min_calls = tonumber(v[4]),
    rate_bp = tonumber(v[5]),   -- failure-rate threshold in basis points; 0 = off
    slow_bp = tonumber(v[6]),   -- slow-call-rate threshold in basis points; 0 = off
    reset_ms = tonumber(v[7]),
    mult = tonumber(v[8]),
    max_ms = tonumber(v[9]),
    jitter = tonumber(v[10]),
    permits = tonumber(v[11]),
    lease_ms = tonumber(v[12]),
    succ = tonumber(v[13]),
    ttl_ms = tonumber(v[14]),
    text = text,
  }
  -- ':2' is the storage layout (B and R as above): a window stored by an older version
  -- has another wk, so it is reset rather than misread.
  c.wk = c.wkind .. ':' .. c.wsize .. ':2'
  return c
end

-- Set the per-call values; nil, or the error reply to return before anything else.
-- NOSETTINGS asks the caller to send the settings text (a library that was reloaded,
-- or a fingerprint this Redis has not seen): it costs the caller one more round trip.
local function breaker_setup(keys, argv)
  S, P, B, R, ARGS = keys[1], keys[2], keys[3], keys[4], argv
  local fp, text = argv[5], argv[6]
  local c = SETTINGS[fp]
  if not c then
    if text == nil or text == '' then
      return redis.error_reply('NOSETTINGS breaker settings ' .. tostring(fp) .. ' not known here')
    end
    c = parse_settings(text)
    if not c then return redis.error_reply('ERR breaker settings: ' .. text) end
    if SETTINGS_N >= SETTINGS_MAX then SETTINGS, SETTINGS_N = {}, 0 end
    SETTINGS[fp], SETTINGS_N = c, SETTINGS_N + 1
  end
  -- The cached table carries the per-call fields too, set afresh on every call.
  c.clock, c.rand, c.channel, c.ev_prefix = argv[1], tonumber(argv[2]), argv[3], argv[4]
  c.who, c.note = argv[7] or '', argv[8] or ''
  cfg, WK, MINE = c, c.wk, c.text
  transition_from, transition_why = '', ''
  return nil
end

local STATES = { closed = 1, open = 1, half_open = 1, forced_open = 1, disabled = 1 }
local FIELDS = { 'st', 'gen', 'until', 'trips', 'consec', 'hs', 'n', 'wf', 'ws', 'h', 'wsec',
  'ct', 'cf', 'cs', 'n_ok', 'n_fail', 'n_slow', 'n_ign', 'n_np', 'n_trips', 'open_ms' }

local function is_fail(c) return c == '1' or c == '3' end
local function is_slow(c) return c == '2' or c == '3' end

local function win_reset(s)
  s.n, s.wf, s.ws, s.h, s.wsec, s.ct, s.cf, s.cs = 0, 0, 0, 0, 0, 0, 0, 0
  redis.call('DEL', B, R)
end

-- Read the state. A script that may make a transition passes publishes=true: whether
-- it may publish is checked here, before its first write (see lua/lib/publish.lua).
local function load(publishes)
  if publishes then
    local refused = publish_refused(cfg.channel)
    if refused then return refused end
  end
  local v = redis.call('HMGET', S, 'st', 'gen', 'until', 'trips', 'consec', 'hs', 'n', 'wf',
    'ws', 'h', 'wsec', 'ct', 'cf', 'cs', 'n_ok', 'n_fail', 'n_slow', 'n_ign', 'n_np',
    'n_trips', 'open_ms', 'wk', 'cfg')
  local s = {
    st = v[1] or 'closed', gen = tonumber(v[2]) or 0, ['until'] = tonumber(v[3]) or 0,
    trips = tonumber(v[4]) or 0, consec = tonumber(v[5]) or 0, hs = tonumber(v[6]) or 0,
    n = tonumber(v[7]) or 0, wf = tonumber(v[8]) or 0, ws = tonumber(v[9]) or 0,
    h = tonumber(v[10]) or 0, wsec = tonumber(v[11]) or 0, ct = tonumber(v[12]) or 0,
    cf = tonumber(v[13]) or 0, cs = tonumber(v[14]) or 0, n_ok = tonumber(v[15]) or 0,
    n_fail = tonumber(v[16]) or 0, n_slow = tonumber(v[17]) or 0, n_ign = tonumber(v[18]) or 0,
    n_np = tonumber(v[19]) or 0, n_trips = tonumber(v[20]) or 0, open_ms = tonumber(v[21]) or 0,
  }
  if not STATES[s.st] then
    return redis.error_reply('CORRUPT breaker key ' .. S .. ' has state ' .. tostring(s.st))
  end
  -- What is stored now; a field of a key that does not exist yet counts as changed.
  s.loaded = { wk = v[22], cfg = v[23] }
  -- Settings stored by a process whose settings differ from ours ('' if none).
  s.other = (v[23] and v[23] ~= MINE) and v[23] or ''
  if v[1] then
    for _, f in ipairs(FIELDS) do s.loaded[f] = s[f] end
  end
  -- A changed window setting (or a fresh key) starts an empty window; a key of the
  -- layout before ':2' may still carry the whole count-window ring in field 'ring'.
  if v[22] ~= WK then
    win_reset(s)
    if v[1] then redis.call('HDEL', S, 'ring') end
  end
  return s
end

local function tw_clear(s)
  s.n, s.wf, s.ws, s.ct, s.cf, s.cs = 0, 0, 0, 0, 0, 0
  redis.call('DEL', B)
end

-- Move the time window forward to second `sec`: the buckets of seconds <= sec - size
-- fall out. The running totals of the newest bucket that fell out are what the window
-- no longer counts, so one ZREVRANGEBYSCORE and one ZREMRANGEBYSCORE drop any number
-- of buckets (each bucket is written once and dropped once).
local function tw_advance(s, sec)
  if sec <= s.wsec then return end
  if s.n > 0 then
    if sec - s.wsec >= cfg.wsize then
      tw_clear(s)
    else
      local cut = sec - cfg.wsize
      local last = redis.call('ZREVRANGEBYSCORE', B, cut, '-inf', 'LIMIT', 0, 1)[1]
      if last then
        local _, t, f, w = string.match(last, '^(%d+):(%d+):(%d+):(%d+)$')
        s.n, s.wf, s.ws = s.ct - tonumber(t), s.cf - tonumber(f), s.cs - tonumber(w)
        -- An empty window restarts its totals (so they stay small): B is empty then,
        -- since every bucket left would hold a call.
        if s.n == 0 then tw_clear(s) else redis.call('ZREMRANGEBYSCORE', B, '-inf', cut) end
      end
    end
  end
  s.wsec = sec
end

local function count(str, pattern)
  local _, k = string.gsub(str, pattern, '')
  return k
end

-- Push m outcomes `c` into the count-based ring of cfg.wsize slots: read the m slots
-- they replace (GETRANGE) and write them in place (SETRANGE), never the whole ring.
local function cw_push(s, c, m)
  local N = cfg.wsize
  local f, w = is_fail(c) and 1 or 0, is_slow(c) and 1 or 0
  if m >= N then
    redis.call('SET', R, string.rep(c, N))
    s.h, s.n, s.wf, s.ws = 0, N, f * N, w * N
    return
  end
  -- The slots from h to the end of the ring, then (wrapping) from its start.
  local first = math.min(m, N - s.h)
  local evicted = redis.call('GETRANGE', R, s.h, s.h + first - 1)
  if m > first then evicted = evicted .. redis.call('GETRANGE', R, 0, m - first - 1) end
  s.n = s.n - count(evicted, '[0123]') + m
  s.wf = s.wf - count(evicted, '[13]') + f * m
  s.ws = s.ws - count(evicted, '[23]') + w * m
  redis.call('SETRANGE', R, s.h, string.rep(c, first))
  if m > first then redis.call('SETRANGE', R, 0, string.rep(c, m - first)) end
  s.h = (s.h + m) % N
end

-- Count m outcomes `c` in the bucket of the current second (replacing its member).
local function tw_push(s, c, m, now)
  tw_advance(s, math.floor(now / 1000))
  s.n, s.ct = s.n + m, s.ct + m
  if is_fail(c) then s.wf, s.cf = s.wf + m, s.cf + m end
  if is_slow(c) then s.ws, s.cs = s.ws + m, s.cs + m end
  redis.call('ZREMRANGEBYSCORE', B, s.wsec, s.wsec)
  redis.call('ZADD', B, s.wsec, s.wsec .. ':' .. s.ct .. ':' .. s.cf .. ':' .. s.cs)
end

-- nil, or the rule that trips the breaker now and a text for people.
local function should_trip(s)
  if cfg.fail_max > 0 and s.consec >= cfg.fail_max then
    return 'consecutive', s.consec .. ' consecutive failure' .. (s.consec == 1 and '' or 's')
      .. ' (fail_max ' .. cfg.fail_max .. ')'
  end
  if cfg.wkind > 0 and s.n > 0 and s.n >= cfg.min_calls then
    if cfg.rate_bp > 0 and s.wf * 10000 >= cfg.rate_bp * s.n then
      return 'failure_rate', 'failure rate ' .. math.floor(s.wf * 100 / s.n) .. '% of ' .. s.n
        .. ' calls (threshold ' .. (cfg.rate_bp / 100) .. '%)'
    end
    if cfg.slow_bp > 0 and s.ws * 10000 >= cfg.slow_bp * s.n then
      return 'slow_call_rate', 'slow-call rate ' .. math.floor(s.ws * 100 / s.n) .. '% of '
        .. s.n .. ' calls (threshold ' .. (cfg.slow_bp / 100) .. '%)'
    end
  end
  return nil
end

local function open_ms(trips)
  local d = cfg.reset_ms * (cfg.mult ^ (trips - 1))
  if d > cfg.max_ms then d = cfg.max_ms end
  return math.floor(d * (1 + cfg.jitter * cfg.rand))
end

local function remain(s, now)
  if s.st == 'open' and s['until'] > now then return s['until'] - now end
  return 0
end

-- Record why the breaker is in its state now (see the field legend): the rule, a text
-- for people, the failure that made it ('' for operators), who and when.
local function audit(why, text, err, now)
  transition_why = text
  redis.call('HSET', S, 'why', why, 'why_text', text, 'why_err', err, 'why_by', cfg.who,
    'why_at', now)
end

-- Every transition goes through here: bump the generation, clear what belongs to
-- the old state, and publish one event (inside this script, so it is atomic with
-- the change and sent exactly once). `why`/`text` say why (nil: time passing, open
-- to half-open); `err` is the failure that made it ('' if none).
local function transition(s, new, now, open_for, why, text, err)
  transition_from = s.st
  if s.st == 'open' or s.st == 'forced_open' then
    s.open_ms = s.open_ms + math.max(0, now - (tonumber(redis.call('HGET', S, 'opened')) or now))
  end
  if new == 'open' and open_for == nil then s.n_trips = s.n_trips + 1 end
  if new == 'open' or new == 'forced_open' then redis.call('HSET', S, 'opened', now) end
  if why then audit(why, text, err or '', now) end
  s.st = new
  s.gen = s.gen + 1
  s.consec, s.hs = 0, 0
  s['until'] = 0
  if new == 'open' then
    if open_for == nil then
      s.trips = s.trips + 1
      open_for = open_ms(s.trips)
    end
    s['until'] = now + open_for
  elseif new ~= 'half_open' then
    s.trips = 0
  end
  if new ~= 'half_open' then win_reset(s) end
  redis.call('DEL', P)
  publish(cfg.channel, cfg.ev_prefix .. mp_str(transition_from) .. mp_str(new)
    .. mp_uint(s.gen) .. mp_uint(remain(s, now)))
end

-- Record m outcomes of code c made in the closed state, then trip if a policy says so.
local function record_closed(s, c, m, now)
  if m <= 0 or s.st ~= 'closed' then return end
  if is_fail(c) then s.consec = s.consec + m else s.consec = 0 end
  if cfg.wkind == 1 then cw_push(s, c, m) elseif cfg.wkind == 2 then tw_push(s, c, m, now) end
  local why, text = should_trip(s)
  if why then transition(s, 'open', now, nil, why, text, cfg.note) end
end

-- Write back only the fields that changed (most calls change one or two), and refresh
-- the TTLs: of S always, of P, B and R only while they can hold anything.
local function save(s, now, keep_cfg)
  local args = {}
  for _, f in ipairs(FIELDS) do
    if s[f] ~= s.loaded[f] then
      args[#args + 1] = f
      args[#args + 1] = s[f]
    end
  end
  if s.loaded.wk ~= WK then
    args[#args + 1] = 'wk'
    args[#args + 1] = WK
  end
  -- The last writer's settings are the stored ones (a snapshot only reads them).
  if s.loaded.cfg ~= MINE and not keep_cfg then
    args[#args + 1] = 'cfg'
    args[#args + 1] = MINE
  end
  if #args > 0 then redis.call('HSET', S, unpack(args)) end
  local ttl = cfg.ttl_ms + remain(s, now)
  redis.call('PEXPIRE', S, ttl)
  if s.st == 'half_open' then redis.call('PEXPIRE', P, ttl) end
  if s.n > 0 then redis.call('PEXPIRE', cfg.wkind == 1 and R or B, ttl) end
end

-- The reply every breaker script returns (parsed by redisbreaker/state.py View.parse):
-- {state, gen, wait_ms, consec, calls, failures, slow, half_open_successes, trips,
--  transitioned_from ('' if none), verdict ('' | 'allow' | 'trial' | 'reject'),
--  the stored settings when they differ from the caller's ('' if not),
--  the reason of the transition this script made ('' if none),
--  the fleet totals n_ok, n_fail, n_slow, n_ign, n_np, n_trips, open_ms}
local function reply(s, verdict, wait_ms)
  return { s.st, s.gen, wait_ms, s.consec, s.n, s.wf, s.ws, s.hs, s.trips, transition_from,
    verdict, s.other, transition_why, s.n_ok, s.n_fail, s.n_slow, s.n_ign, s.n_np, s.n_trips,
    s.open_ms }
end
