-- Shared state machine of one circuit breaker. Every breaker script starts with
-- `--! use: clock, msgpack, breaker`, so this text is part of each of them.
--
-- KEYS (all share the breaker's hash tag):
--   KEYS[1] S  hash   st, gen, until, trips, consec, hs, n, wf, ws, h, ring, wsec, wk
--   KEYS[2] P  zset   half-open permits: member = caller's token, score = lease expiry (ms)
--   KEYS[3] B  hash   time-window buckets t<i>/f<i>/s<i> (calls, failures, slow) per second
-- ARGV[1..18] is the breaker's configuration, sent with every call (see
-- redisbreaker/options.py `BreakerOptions.argv`); ARGV[OP..] belong to the operation.
--
-- Outcome codes: '0' success, '1' failure, '2' slow success, '3' slow failure,
-- 'x' ignored (releases a permit, records nothing).
-- redisbreaker/model.py is the same machine in Python; the test suite checks that the
-- two agree step by step, so a change here must be made there too.

local S, P, B = KEYS[1], KEYS[2], KEYS[3]

-- ARGV[1] clock override ('' = TIME); ARGV[2] uniform [0, 1) from the caller for the
-- jitter (Redis seeds math.random alike in every script); ARGV[3] the event channel;
-- ARGV[4] the event prefix (msgpack: array header, breaker name, origin id);
-- ARGV[5..18] the static settings (the caller encodes them once). An operation's own
-- arguments start at ARGV[OP].
local OP = 19
local cfg = {
  clock = ARGV[1], rand = tonumber(ARGV[2]), channel = ARGV[3], ev_prefix = ARGV[4],
  fail_max = tonumber(ARGV[5]),
  wkind = tonumber(ARGV[6]),     -- 0 none, 1 count-based, 2 time-based
  wsize = tonumber(ARGV[7]),     -- calls, or seconds
  min_calls = tonumber(ARGV[8]),
  rate_bp = tonumber(ARGV[9]),   -- failure-rate threshold in basis points; 0 = off
  slow_bp = tonumber(ARGV[10]),  -- slow-call-rate threshold in basis points; 0 = off
  reset_ms = tonumber(ARGV[11]),
  mult = tonumber(ARGV[12]),
  max_ms = tonumber(ARGV[13]),
  jitter = tonumber(ARGV[14]),
  permits = tonumber(ARGV[15]),
  lease_ms = tonumber(ARGV[16]),
  succ = tonumber(ARGV[17]),
  ttl_ms = tonumber(ARGV[18]),
}
local WK = cfg.wkind .. ':' .. cfg.wsize
local STATES = { closed = 1, open = 1, half_open = 1, forced_open = 1, disabled = 1 }
local FIELDS = { 'st', 'gen', 'until', 'trips', 'consec', 'hs', 'n', 'wf', 'ws', 'h', 'ring',
  'wsec' }
local transition_from = ''

local function is_fail(c) return c == '1' or c == '3' end
local function is_slow(c) return c == '2' or c == '3' end

local function win_reset(s)
  s.n, s.wf, s.ws, s.h, s.wsec = 0, 0, 0, 0, 0
  s.ring = (cfg.wkind == 1) and string.rep('-', cfg.wsize) or ''
  redis.call('DEL', B)
end

local function load()
  local v = redis.call('HMGET', S, 'st', 'gen', 'until', 'trips', 'consec', 'hs', 'n', 'wf',
    'ws', 'h', 'ring', 'wsec', 'wk')
  local s = {
    st = v[1] or 'closed', gen = tonumber(v[2]) or 0, ['until'] = tonumber(v[3]) or 0,
    trips = tonumber(v[4]) or 0, consec = tonumber(v[5]) or 0, hs = tonumber(v[6]) or 0,
    n = tonumber(v[7]) or 0, wf = tonumber(v[8]) or 0, ws = tonumber(v[9]) or 0,
    h = tonumber(v[10]) or 0, ring = v[11] or '', wsec = tonumber(v[12]) or 0,
  }
  if not STATES[s.st] then
    return redis.error_reply('CORRUPT breaker key ' .. S .. ' has state ' .. tostring(s.st))
  end
  -- What is stored now; a field of a key that does not exist yet counts as changed.
  s.loaded = { wk = v[13] }
  if v[1] then
    for k, f in ipairs(FIELDS) do
      if k ~= 11 then s.loaded[f] = s[f] end
    end
    s.loaded.ring = v[11] and s.ring or nil
  end
  -- A changed window setting (or a fresh key) starts an empty window.
  if v[13] ~= WK then win_reset(s) end
  return s
end

-- Move the time window forward to second `sec`, dropping buckets that fell out.
local function tw_advance(s, sec)
  if sec <= s.wsec then return end
  if sec - s.wsec >= cfg.wsize then
    s.n, s.wf, s.ws = 0, 0, 0
    redis.call('DEL', B)
  else
    for x = s.wsec + 1, sec do
      local i = x % cfg.wsize
      local b = redis.call('HMGET', B, 't' .. i, 'f' .. i, 's' .. i)
      s.n = s.n - (tonumber(b[1]) or 0)
      s.wf = s.wf - (tonumber(b[2]) or 0)
      s.ws = s.ws - (tonumber(b[3]) or 0)
      redis.call('HDEL', B, 't' .. i, 'f' .. i, 's' .. i)
    end
  end
  s.wsec = sec
end

local function count(str, pattern)
  local _, k = string.gsub(str, pattern, '')
  return k
end

-- Push m outcomes `c` into the count-based ring of cfg.wsize slots ('-' = empty).
local function cw_push(s, c, m)
  local N = cfg.wsize
  local f, w = is_fail(c) and 1 or 0, is_slow(c) and 1 or 0
  if m >= N then
    s.ring, s.h, s.n, s.wf, s.ws = string.rep(c, N), 0, N, f * N, w * N
    return
  end
  local first = math.min(m, N - s.h)
  local evicted = string.sub(s.ring, s.h + 1, s.h + first) .. string.sub(s.ring, 1, m - first)
  s.n = s.n - count(evicted, '[0123]') + m
  s.wf = s.wf - count(evicted, '[13]') + f * m
  s.ws = s.ws - count(evicted, '[23]') + w * m
  if s.h + m <= N then
    s.ring = string.sub(s.ring, 1, s.h) .. string.rep(c, m) .. string.sub(s.ring, s.h + m + 1)
  else
    local wrap = s.h + m - N
    s.ring = string.rep(c, wrap) .. string.sub(s.ring, wrap + 1, s.h) .. string.rep(c, N - s.h)
  end
  s.h = (s.h + m) % N
end

local function tw_push(s, c, m, now)
  tw_advance(s, math.floor(now / 1000))
  local i = s.wsec % cfg.wsize
  redis.call('HINCRBY', B, 't' .. i, m)
  s.n = s.n + m
  if is_fail(c) then redis.call('HINCRBY', B, 'f' .. i, m); s.wf = s.wf + m end
  if is_slow(c) then redis.call('HINCRBY', B, 's' .. i, m); s.ws = s.ws + m end
end

local function should_trip(s)
  if cfg.fail_max > 0 and s.consec >= cfg.fail_max then return true end
  if cfg.wkind > 0 and s.n > 0 and s.n >= cfg.min_calls then
    if cfg.rate_bp > 0 and s.wf * 10000 >= cfg.rate_bp * s.n then return true end
    if cfg.slow_bp > 0 and s.ws * 10000 >= cfg.slow_bp * s.n then return true end
  end
  return false
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

-- Every transition goes through here: bump the generation, clear what belongs to
-- the old state, and publish one event (inside this script, so it is atomic with
-- the change and sent exactly once).
local function transition(s, new, now, open_for)
  transition_from = s.st
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
  redis.call('PUBLISH', cfg.channel, cfg.ev_prefix .. mp_str(transition_from) .. mp_str(new)
    .. mp_uint(s.gen) .. mp_uint(remain(s, now)))
end

-- Record m outcomes of code c made in the closed state, then trip if a policy says so.
local function record_closed(s, c, m, now)
  if m <= 0 or s.st ~= 'closed' then return end
  if is_fail(c) then s.consec = s.consec + m else s.consec = 0 end
  if cfg.wkind == 1 then cw_push(s, c, m) elseif cfg.wkind == 2 then tw_push(s, c, m, now) end
  if should_trip(s) then transition(s, 'open', now) end
end

-- Successes counted locally by a caller since its last sync, for generation `gen`.
local function apply_pending(s, m, gen, now)
  if m > 0 and gen == s.gen then record_closed(s, '0', m, now) end
end

-- Write back only the fields that changed (most calls change one or two), and refresh
-- the TTLs: of S always, of P and B only while they can hold anything.
local function save(s, now)
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
  if #args > 0 then redis.call('HSET', S, unpack(args)) end
  local ttl = cfg.ttl_ms + remain(s, now)
  redis.call('PEXPIRE', S, ttl)
  if s.st == 'half_open' then redis.call('PEXPIRE', P, ttl) end
  if cfg.wkind == 2 then redis.call('PEXPIRE', B, ttl) end
end

-- The reply every breaker script returns (parsed by redisbreaker/core.py):
-- {state, gen, wait_ms, consec, calls, failures, slow, half_open_successes, trips,
--  transitioned_from ('' if none), verdict ('' | 'allow' | 'trial' | 'reject')}
local function reply(s, verdict, wait_ms)
  return { s.st, s.gen, wait_ms, s.consec, s.n, s.wf, s.ws, s.hs, s.trips, transition_from,
    verdict }
end
