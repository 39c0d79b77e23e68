-- Publishing events from inside scripts, and checking first that Redis will let us.
--
-- A script publishes as part of the change it makes (a breaker's transition, a
-- transaction's decision), so the event is sent exactly once and only if the change
-- is made. A user whose ACL denies the publish must therefore be refused before the
-- script's first write, never halfway: publish_refused() asks the ACL up front
-- (redis.acl_check_cmd, Redis 7+). Where that is missing (Redis 6.2, fakeredis) the
-- publish itself is the check, so callers publish before their real writes.
--
-- Which command: a hash-tagged channel is the channel of a hash slot, which the client
-- names only on Redis Cluster (redisbreaker/keys.py): there PUBLISH would be broadcast
-- to every node, so it goes by SPUBLISH, which only the nodes of the slot's shard
-- carry, where the server has it (Redis 7+; REDIS_VERSION_NUM is new in 7.0 too). On
-- Redis 6.2 it falls back to PUBLISH on the same channel (broadcast, as before), and a
-- channel without a tag (one server: standalone, Sentinel, fakeredis) always uses
-- PUBLISH. The subscribers follow the same rule (redisbreaker/events.py).

-- Read at the first publish, not at load: a Redis Functions library's load-time code
-- sees no globals but the registration API (redisbreaker/functions.py).
local sharded_pubsub

local function publish_cmd(channel)
  if sharded_pubsub == nil then
    sharded_pubsub = (tonumber(redis.REDIS_VERSION_NUM) or 0) >= 0x070000
  end
  if sharded_pubsub and string.find(channel, '{', 1, true) then
    return 'SPUBLISH'
  end
  return 'PUBLISH'
end

-- nil if this user may publish on `channel`; else the error reply to return before
-- any write. The reply starts with NOPERM, as Redis's own refusal does, and names the
-- command and channel (redisbreaker/outage.py reports it as a permission error).
local function publish_refused(channel)
  local cmd = publish_cmd(channel)
  if redis.acl_check_cmd and not redis.acl_check_cmd(cmd, channel, '') then
    return redis.error_reply('NOPERM this user has no permissions to run the ' ..
      "'" .. string.lower(cmd) .. "' command on channel " .. channel)
  end
  return nil
end

-- Publish `payload` on `channel`; a refusal raises (a script error).
local function publish(channel, payload)
  redis.call(publish_cmd(channel), channel, payload)
end

-- Publish `payload` on `channel`; nil, or Redis's refusal as an error reply.
local function try_publish(channel, payload)
  local sent = redis.pcall(publish_cmd(channel), channel, payload)
  if type(sent) == 'table' and sent['err'] then
    return redis.error_reply(sent['err'])
  end
  return nil
end
