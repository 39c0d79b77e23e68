-- A breaker's state as one string (layout 3), so a script reads it with one GET and
-- writes it, with its TTL, with one SET ... PX: each redis.call costs a script about as
-- much as its own work, and the hash this replaced took HMGET, HSET and PEXPIRE.
--
--   byte 1      the layout, 3
--   byte 2      the state: 1 closed, 2 open, 3 half_open, 4 forced_open, 5 disabled
--   then        the numbers of NUMS, each an unsigned 64-bit big-endian integer
--   then        the strings of STRS, each a 32-bit big-endian length and its bytes
--
-- redisbreaker/stored.py reads and writes the same layout in Python (the operator
-- listing reads many states in one pipeline; the tests look inside).
-- Redis has the `struct` library; fakeredis does not, so there the same bytes are
-- made and read by hand (slower, and only ever used by tests).
-- With `struct`, the strings are left packed (s.tail) until a step needs them: most
-- calls only check that the stored settings are theirs (one prefix compare) and write
-- the tail back as it was. A tail that does not parse is read as empty strings (the
-- settings and the reason are not state a step decides by; the numbers are checked).

local LAYOUT = 3
-- The numbers a recorded outcome of a closed breaker changes come first, with what the
-- fast path checks (HOT: see peek_hot), so it reads and rewrites one run of bytes.
local NUMS = { 'gen', 'consec', 'n_ok', 'n_fail', 'n_slow', 'n_ign', 'n_np', 'wkind', 'wsize',
  'until', 'trips', 'hs', 'n', 'wf', 'ws', 'h', 'wsec', 'ct', 'cf', 'cs', 'n_trips', 'open_ms',
  'opened', 'why_at' }
local STRS = { 'cfg', 'why', 'why_text', 'why_err', 'why_by' }
local ST_CODE = { closed = 1, open = 2, half_open = 3, forced_open = 4, disabled = 5 }
local ST_NAME = { 'closed', 'open', 'half_open', 'forced_open', 'disabled' }
-- Spelled out: a Redis Functions library may call no library function at load time.
local HEAD = 194 -- 2 + 8 * #NUMS
local FORMAT = '>BBI8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I4c0I4c0I4c0I4c0I4c0'
local HEAD_FORMAT = '>BBI8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8I8'
local TAIL_FORMAT = '>I4c0I4c0I4c0I4c0I4c0'

local function be_bytes(n, width)
  local b = {}
  for i = width, 1, -1 do
    b[i] = n % 256
    n = math.floor(n / 256)
  end
  return string.char(unpack(b))
end

local function be_number(raw, at, width)
  local n = 0
  for i = at, at + width - 1 do n = n * 256 + string.byte(raw, i) end
  return n
end

-- A string as the tail stores it: its 32-bit length, then its bytes.
local function encode_text(text)
  return be_bytes(#text, 4) .. text
end

-- The fields of `s` as the stored string (numbers are whole and >= 0 by construction).
local function encode_state(s)
  if s.tail then
    return struct.pack(HEAD_FORMAT, LAYOUT, ST_CODE[s.st], s.gen, s.consec, s.n_ok,
      s.n_fail, s.n_slow, s.n_ign, s.n_np, s.wkind, s.wsize, s['until'], s.trips, s.hs, s.n, s.wf,
      s.ws, s.h, s.wsec, s.ct, s.cf, s.cs, s.n_trips, s.open_ms, s.opened, s.why_at) .. s.tail
  end
  if struct then
    return struct.pack(FORMAT, LAYOUT, ST_CODE[s.st], s.gen, s.consec, s.n_ok,
      s.n_fail, s.n_slow, s.n_ign, s.n_np, s.wkind, s.wsize, s['until'], s.trips, s.hs, s.n, s.wf,
      s.ws, s.h, s.wsec, s.ct, s.cf, s.cs, s.n_trips, s.open_ms, s.opened, s.why_at,
      #s.cfg, s.cfg, #s.why, s.why, #s.why_text, s.why_text, #s.why_err, s.why_err,
      #s.why_by, s.why_by)
  end
  local out = { string.char(LAYOUT, ST_CODE[s.st]) }
  for _, f in ipairs(NUMS) do out[#out + 1] = be_bytes(s[f], 8) end
  for _, f in ipairs(STRS) do out[#out + 1] = be_bytes(#s[f], 4) .. s[f] end
  return table.concat(out)
end

-- The table the stored string `raw` holds, or nil if it is not a state of this layout.
local function decode_state(raw)
  if #raw < HEAD + 4 * #STRS or string.byte(raw, 1) ~= LAYOUT then return nil end
  local st = ST_NAME[string.byte(raw, 2)]
  if not st then return nil end
  if struct then
    local _, _, gen, consec, n_ok, n_fail, n_slow, n_ign, n_np, wkind, wsize, til, trips, hs, n,
      wf, ws, h, wsec, ct, cf, cs, n_trips, open_ms, opened, why_at, stop =
      struct.unpack(HEAD_FORMAT, raw)
    return { st = st, gen = gen, ['until'] = til, trips = trips, consec = consec, hs = hs, n = n,
      wf = wf, ws = ws, h = h, wsec = wsec, ct = ct, cf = cf, cs = cs, n_ok = n_ok,
      n_fail = n_fail, n_slow = n_slow, n_ign = n_ign, n_np = n_np, n_trips = n_trips,
      open_ms = open_ms, opened = opened, why_at = why_at, wkind = wkind, wsize = wsize,
      tail = string.sub(raw, stop) }
  end
  local s, at = { st = st }, 3
  for _, f in ipairs(NUMS) do
    s[f], at = be_number(raw, at, 8), at + 8
  end
  for _, f in ipairs(STRS) do
    if at + 3 > #raw then return nil end
    local len = be_number(raw, at, 4)
    if at + 3 + len > #raw then return nil end
    s[f], at = string.sub(raw, at + 4, at + 3 + len), at + 4 + len
  end
  if at ~= #raw + 1 then return nil end
  return s
end

-- The first HOT numbers of NUMS, read and written in place by the fast path of a
-- recorded outcome (lua/lib/outcomes.lua closed_tally): gen, consec, n_ok, n_fail,
-- n_slow, n_ign, n_np, wkind, wsize. Only with `struct`, and only for a string whose
-- first two bytes are the layout's and whose length decode_state() accepts.
local HOT = 9
local HOT_FORMAT = '>I8I8I8I8I8I8I8I8I8'
local HOT_HEAD = '>BBI8I8I8I8I8I8I8I8I8'

local function peek_hot(raw)
  return struct.unpack(HOT_FORMAT, raw, 3)
end

-- `raw` (a closed state) with its HOT numbers replaced, every other byte as it was.
local function with_hot(raw, gen, consec, ok, fail, slow, ign, np, wkind, wsize)
  return struct.pack(HOT_HEAD, LAYOUT, ST_CODE.closed, gen, consec, ok, fail, slow, ign, np,
    wkind, wsize) .. string.sub(raw, 3 + 8 * HOT)
end

-- Unpack the strings s.tail holds into their fields (a no-op once done).
local function state_strings(s)
  local tail = s.tail
  if tail == nil then return end
  s.tail = nil
  local ok, c, why, why_text, why_err, why_by, stop = pcall(struct.unpack, TAIL_FORMAT, tail)
  if ok and stop == #tail + 1 then
    s.cfg, s.why, s.why_text, s.why_err, s.why_by = c, why, why_text, why_err, why_by
  else
    s.cfg, s.why, s.why_text, s.why_err, s.why_by = '', '', '', '', ''
  end
end
