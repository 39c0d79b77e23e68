--! use: clock, msgpack, publish, codec
-- Shared state machine of one circuit breaker. Every breaker script starts with
-- `--! use: breaker` (or a library that uses it), so this text is part of each of them.
--
-- KEYS (all share the breaker's hash tag):
--   KEYS[1] S  string the state, one string (lua/lib/codec.lua) of these fields:
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
--                     wkind wsize  the window the counts belong to
--                     cfg     the settings of the process that wrote last (ARGV[6])
--                     n_ok n_fail n_slow n_ign n_np  fleet-wide totals of calls that
--                             succeeded, failed, were slow, were ignored, were refused
--                             (not permitted), whatever the generation
--                     n_trips automatic trips ever; open_ms time spent open (ended periods)
--                     why why_text why_err why_by why_at  the last transition's reason
--                             (rule, text, the failure that made it, who, when)
--                     opened  when the current open period began (server ms)
--   KEYS[2] P  zset   half-open permits: member = caller's token, score = lease expiry (ms)
--   KEYS[3] B  zset   time-window buckets, one per second that recorded something:
--                     score = the second, member = '<second>:<ct>:<cf>:<cs>', the running
--                     totals (calls, failures, slow) up to the end of that second
--   KEYS[4] R  string count-window ring, one byte per slot ('0'..'3'; a slot past the
--                     end of the string is empty); the next slot to write is S.h
-- A recorded outcome costs O(1) commands and bytes whatever the window size (a batch
-- of m pending successes: O(min(m, size)) bytes). B and R exist only while the window
-- holds something (n > 0); a state written for another window starts an empty window.
-- A state stored as a hash (the layout before 3) is read once and rewritten as a string;
-- a process of such an older version meets the string as a key of the wrong type
-- (CorruptStateError), and follows its on_outage policy until it is upgraded.
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
-- caller for the jitter (Redis seeds math.random alike in every script; '0' when the
-- settings have no jitter); ARGV[3] the
-- event channel; ARGV[4] the event prefix (msgpack: array header, breaker name, origin
-- id); ARGV[5] the settings' fingerprint; ARGV[6] the settings text (14 numbers joined
-- by ',', redisbreaker/options.py `BreakerOptions.settings_text`), or '' when the
-- caller expects this library to know the fingerprint already; ARGV[7] who calls
-- (host:pid, or the operator); ARGV[8] a note: the last failure this call reports
-- ('Class: message'), or the operator's reason; ARGV[9] '1' to refresh the TTLs, '' to
-- keep them (each process refreshes on its first call, then at most every ttl/10: see
-- save()). An operation's own arguments start at ARGV[OP].
local OP = 10
local S, P, B, R, ARGS
local cfg, MINE
local transition_from, transition_why
-- The call's clock (server ms), read at its first use: a recorded outcome that changes
-- no state and no time window never needs TIME (see clock()).
local NOW

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
  -- How a hash of the layout before 3 named this window (B and R are unchanged).
  c.legacy_wk = c.wkind .. ':' .. c.wsize .. ':2'
  -- How a stored state's tail starts when these are its settings (see load()).
  c.text_enc = encode_text(text)
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
  cfg, MINE = c, c.text
  transition_from, transition_why = '', ''
  NOW = nil
  return nil
end

-- The rest of the call's head, read where a step needs it (most calls need little of
-- it, and copying it all costs a recorded outcome more than its own arithmetic).
local function head_clock() return ARGS[1] end
local function head_rand() return tonumber(ARGS[2]) end
local function head_channel() return ARGS[3] end
local function head_event_prefix() return ARGS[4] end
local function head_who() return ARGS[7] or '' end
local function head_note() return ARGS[8] or '' end
local function head_refresh() return (ARGS[9] or '') ~= '' end

-- The call's time (server ms): TIME once, at the first use, or the test's override.
-- breaker_flush reads TIME once for many breakers and passes it in (set_clock).
local function clock()
  if NOW == nil then NOW = now_ms(head_clock()) end
  return NOW
end

local function set_clock(now)
  if now ~= nil and head_clock() == '' then NOW = now end
end

-- The server time this call read, if it read it (nil if not, or if a test drove it).
local function server_clock()
  if head_clock() == '' then return NOW end
  return nil
end

local STATES = { closed = 1, open = 1, half_open = 1, forced_open = 1, disabled = 1 }
-- The numeric fields of a state hash of the layout before 3 (see legacy_state).
local LEGACY = { 'gen', 'until', 'trips', 'consec', 'hs', 'n', 'wf', 'ws', 'h', 'wsec', 'ct', 'cf',
  'cs', 'n_ok', 'n_fail', 'n_slow', 'n_ign', 'n_np', 'n_trips', 'open_ms', 'opened', 'why_at' }

local function is_fail(c) return c == '1' or c == '3' end
local function is_slow(c) return c == '2' or c == '3' end

-- s.win_new: the window's key (B or R) may be new, so it has no TTL yet.
local function win_reset(s)
  s.n, s.wf, s.ws, s.h, s.wsec, s.ct, s.cf, s.cs = 0, 0, 0, 0, 0, 0, 0, 0
  s.win_new = true
  redis.call('DEL', B, R)
end

local function fresh_state()
  return { st = 'closed', gen = 0, ['until'] = 0, trips = 0, consec = 0, hs = 0, n = 0, wf = 0,
    ws = 0, h = 0, wsec = 0, ct = 0, cf = 0, cs = 0, n_ok = 0, n_fail = 0, n_slow = 0, n_ign = 0,
    n_np = 0, n_trips = 0, open_ms = 0, opened = 0, why_at = 0, wkind = -1, wsize = -1, cfg = '',
    why = '', why_text = '', why_err = '', why_by = '' }
end

-- A state hash written by a version before layout 3: its fields as a state table (the
-- next save replaces the hash with the string), or an error reply.
local function legacy_state()
  local v = redis.call('HMGET', S, 'st', 'wk', 'cfg', 'why', 'why_text', 'why_err', 'why_by',
    unpack(LEGACY))
  local s = fresh_state()
  s.st = v[1] or 'closed'
  if not STATES[s.st] then
    return redis.error_reply('CORRUPT breaker key ' .. S .. ' has state ' .. tostring(s.st))
  end
  for i, f in ipairs(LEGACY) do s[f] = tonumber(v[i + 7]) or 0 end
  s.cfg, s.why, s.why_text, s.why_err, s.why_by = v[3] or '', v[4] or '', v[5] or '', v[6] or '',
    v[7] or ''
  if v[2] == cfg.legacy_wk then s.wkind, s.wsize = cfg.wkind, cfg.wsize end
  return s
end

-- Read the state. A script that may make a transition passes publishes=true: whether
-- it may publish is checked here, before its first write (see lua/lib/publish.lua).
-- s.exists says whether the key existed; s.other is the settings stored by a process
-- whose settings differ from ours ('' if none). `raw` is the key's GET reply when the
-- caller read it already (report() reads it first, for its fast path).
local function load(publishes, raw)
  if publishes then
    local refused = publish_refused(head_channel())
    if refused then return refused end
  end
  if raw == nil then raw = redis.pcall('GET', S) end
  local s
  if raw == false then
    s = fresh_state()
  elseif type(raw) == 'string' then
    s = decode_state(raw)
    if not s then
      return redis.error_reply('CORRUPT breaker key ' .. S .. ' holds ' .. #raw
        .. ' bytes that are not a breaker state')
    end
  elseif string.sub(raw.err, 1, 9) ~= 'WRONGTYPE' then
    -- e.g. NOPERM (not the key's fault); named, as Redis does not name it in a script
    return redis.error_reply(raw.err .. " (running 'get' on " .. S .. ')')
  elseif redis.call('TYPE', S)['ok'] == 'hash' then
    s = legacy_state()
    if s.err then return s end
    s.legacy = true
  else
    return redis.error_reply('CORRUPT breaker key ' .. S .. ': WRONGTYPE, not a breaker state')
  end
  s.exists = raw ~= false
  -- Stored settings that are ours leave the tail packed (the common case).
  if s.tail and string.sub(s.tail, 1, #cfg.text_enc) ~= cfg.text_enc then state_strings(s) end
  s.other = (not s.tail and s.cfg ~= '' and s.cfg ~= MINE) and s.cfg or ''
  -- A changed window setting (or a fresh key) starts an empty window.
  if s.wkind ~= cfg.wkind or s.wsize ~= cfg.wsize then
    win_reset(s)
    s.wkind, s.wsize = cfg.wkind, cfg.wsize
  end
  s.win_new = s.win_new or s.n == 0 -- an empty window has no key
  return s
end

local function tw_clear(s)
  s.n, s.wf, s.ws, s.ct, s.cf, s.cs = 0, 0, 0, 0, 0, 0
  s.win_new = true
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
    s.win_new = true -- SET dropped the TTL
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
local function tw_push(s, c, m)
  tw_advance(s, math.floor(clock() / 1000))
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
  return math.floor(d * (1 + cfg.jitter * head_rand()))
end

-- Time left open (ms); only an open breaker reads the clock.
local function remain(s)
  if s.st ~= 'open' then return 0 end
  local now = clock()
  if s['until'] > now then return s['until'] - now end
  return 0
end

-- Record why the breaker is in its state now (see the field legend): the rule, a text
-- for people, the failure that made it ('' for operators), who and when.
local function audit(s, why, text, err)
  state_strings(s)
  transition_why = text
  s.why, s.why_text, s.why_err, s.why_by, s.why_at = why, text, err, head_who(), clock()
end

-- Every transition goes through here: bump the generation, clear what belongs to
-- the old state, and publish one event (inside this script, so it is atomic with
-- the change and sent exactly once). `why`/`text` say why (nil: time passing, open
-- to half-open); `err` is the failure that made it ('' if none).
local function transition(s, new, open_for, why, text, err)
  local now = clock()
  transition_from = s.st
  if (s.st == 'open' or s.st == 'forced_open') and s.opened > 0 then
    s.open_ms = s.open_ms + math.max(0, now - s.opened)
  end
  if new == 'open' and open_for == nil then s.n_trips = s.n_trips + 1 end
  if new == 'open' or new == 'forced_open' then s.opened = now end
  if why then audit(s, why, text, err or '') end
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
  publish(head_channel(), head_event_prefix() .. mp_str(transition_from) .. mp_str(new)
    .. mp_uint(s.gen) .. mp_uint(remain(s)))
end

-- Record m outcomes of code c made in the closed state, then trip if a policy says so.
local function record_closed(s, c, m)
  if m <= 0 or s.st ~= 'closed' then return end
  if is_fail(c) then s.consec = s.consec + m else s.consec = 0 end
  if cfg.wkind == 1 then cw_push(s, c, m) elseif cfg.wkind == 2 then tw_push(s, c, m) end
  local why, text = should_trip(s)
  if why then transition(s, 'open', nil, why, text, head_note()) end
end

-- Write the state in one SET, with its TTL when that is due, and the other keys' TTLs
-- (P while half-open, B or R while the window counts something).
-- The TTL is set when the caller asks (its process's first call, then at most every
-- ttl/10), and whenever it must change: a new or migrated key, a transition (an open
-- period adds its length), any state but closed; otherwise SET keeps it (KEEPTTL).
-- Setting it costs a script about as much as the rest of a recorded failure's writes,
-- and an idle state still expires between 0.9 x ttl and ttl after its last call.
-- keep_cfg: leave the stored settings as they are (a snapshot only reads them);
-- otherwise the last writer's settings are the stored ones.
local function save(s, keep_cfg)
  if not keep_cfg and not s.tail then s.cfg = MINE end -- (a packed tail holds ours)
  local ttl = cfg.ttl_ms + remain(s)
  local refresh = head_refresh() or not s.exists or s.legacy or transition_from ~= ''
    or s.st ~= 'closed'
  s.blob = encode_state(s)
  if refresh then
    redis.call('SET', S, s.blob, 'PX', ttl)
    if s.st == 'half_open' then redis.call('PEXPIRE', P, ttl) end
  else
    redis.call('SET', S, s.blob, 'KEEPTTL')
  end
  if s.n > 0 and (refresh or s.win_new) then
    redis.call('PEXPIRE', cfg.wkind == 1 and R or B, ttl)
  end
end

-- The reply every breaker script returns (parsed by redisbreaker/state.py View.parse):
-- {the state as stored (the string save() wrote), wait_ms, transitioned_from ('' if
--  none), verdict ('' | 'allow' | 'trial' | 'reject'), the stored settings when they
--  differ from the caller's ('' if not), the reason of the transition this script made
--  ('' if none)}. The state travels as the one string it already is: a reply of twenty
--  numbers cost the script more than its GET.
local function reply(s, verdict, wait_ms)
  return { s.blob or encode_state(s), wait_ms, transition_from, verdict, s.other,
    transition_why }
end
