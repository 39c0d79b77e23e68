-- Publishing events from inside scripts, and checking first that Redis will let us.
--
-- A script publishes as part of the change it makes (a breaker's transition, a
-- transaction's decision), so the event is sent exactly once and only if the change
-- is made. A user whose ACL denies the publish must therefore be refused before the
-- script's first write, never halfway: publish_refused() asks the ACL up front
-- (redis.acl_check_cmd, Redis 7+). Where that is missing (Redis 6.2, fakeredis) the
-- publish itself is the check, so callers publish before their real writes.

local PUBLISH_CMD = 'PUBLISH'

-- nil if this user may publish on `channel`; else the error reply to return before
-- any write. The reply starts with NOPERM, as Redis's own refusal does, and names the
-- command and channel (redisbreaker/outage.py reports it as a permission error).
local function publish_refused(channel)
  if redis.acl_check_cmd and not redis.acl_check_cmd(PUBLISH_CMD, channel, '') then
    return redis.error_reply('NOPERM this user has no permissions to run the ' ..
      "'" .. string.lower(PUBLISH_CMD) .. "' command on channel " .. channel)
  end
  return nil
end

-- Publish `payload` on `channel`; a refusal raises (a script error).
local function publish(channel, payload)
  redis.call(PUBLISH_CMD, channel, payload)
end

-- Publish `payload` on `channel`; nil, or Redis's refusal as an error reply.
local function try_publish(channel, payload)
  local sent = redis.pcall(PUBLISH_CMD, channel, payload)
  if type(sent) == 'table' and sent['err'] then
    return redis.error_reply(sent['err'])
  end
  return nil
end
