-- Tiny msgpack encoders for published events. Hand-written rather than cmsgpack so
-- the scripts also run where cmsgpack is missing (fakeredis); they cover what we
-- publish: strings, non-negative integers, and flat arrays of them.
local function mp_uint(n)
  if n < 128 then
    return string.char(n)
  elseif n < 65536 then
    return string.char(0xcd, math.floor(n / 256), n % 256)
  elseif n < 4294967296 then
    return string.char(0xce, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
      math.floor(n / 256) % 256, n % 256)
  end
  local hi = math.floor(n / 4294967296)
  local lo = n - hi * 4294967296
  return string.char(0xcf, math.floor(hi / 16777216) % 256, math.floor(hi / 65536) % 256,
    math.floor(hi / 256) % 256, hi % 256, math.floor(lo / 16777216) % 256,
    math.floor(lo / 65536) % 256, math.floor(lo / 256) % 256, lo % 256)
end

local function mp_str(s)
  local n = string.len(s)
  if n < 32 then
    return string.char(0xa0 + n) .. s
  elseif n < 256 then
    return string.char(0xd9, n) .. s
  elseif n < 65536 then
    return string.char(0xda, math.floor(n / 256), n % 256) .. s
  end
  return string.char(0xdb, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256) .. s
end

local function mp_value(v)
  if type(v) == 'number' then
    return mp_uint(v)
  end
  return mp_str(tostring(v))
end

local function mp_array(items)
  local n = #items
  local out = {}
  if n < 16 then
    out[1] = string.char(0x90 + n)
  else
    out[1] = string.char(0xdc, math.floor(n / 256), n % 256)
  end
  for i = 1, n do
    out[i + 1] = mp_value(items[i])
  end
  return table.concat(out)
end
