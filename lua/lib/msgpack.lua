-- Tiny msgpack encoders for event payloads. Hand-written rather than cmsgpack so
-- the scripts also run where cmsgpack is missing (fakeredis); only the shapes we
-- publish are covered: short strings and non-negative integers.
local function mp_str(s)
  local n = #s
  if n < 32 then return string.char(0xa0 + n) .. s end
  return string.char(0xd9, n) .. s
end

local function mp_uint(n)
  n = math.floor(n)
  if n < 128 then return string.char(n) end
  if n < 4294967296 then
    return string.char(0xce, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
      math.floor(n / 256) % 256, n % 256)
  end
  local hi, lo = math.floor(n / 4294967296), n % 4294967296
  return string.char(0xcf, math.floor(hi / 16777216) % 256, math.floor(hi / 65536) % 256,
    math.floor(hi / 256) % 256, hi % 256, math.floor(lo / 16777216) % 256,
    math.floor(lo / 65536) % 256, math.floor(lo / 256) % 256, lo % 256)
end
