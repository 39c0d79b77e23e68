-- The clock of every script: the Redis server's TIME in milliseconds. Hosts' clocks
-- are never used. A non-empty override is accepted only so the test suite can drive
-- a virtual clock; the library always sends "".
local function now_ms(override)
  if override ~= nil and override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
