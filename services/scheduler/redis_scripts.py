"""The Lua scripts that make the Redis backend's multi-key steps atomic, each with its KEYS and ARGV.

Some scripts build key names from a prefix passed in ARGV (holder sets, base sets), so they assume a
single Redis, not a cluster; every key they touch lives under the scheduler's own prefix.
"""

from __future__ import annotations

# KEYS: engine:info, engine:seen, engine:load. ARGV: engine id, now, load.
# 1 when the engine is known and refreshed; 0 when it must register again.
HEARTBEAT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
return 1
"""

# KEYS: engine:info, resident:<engine>. ARGV: engine id, holders key prefix, adapter key...
# Replaces the engine's resident set, touching the reverse index only for what changed; -1 when the
# engine is unknown (it registers again at its next heartbeat and reports again).
SET_RESIDENT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
local new = {}
for i = 3, #ARGV do new[ARGV[i]] = true end
local changed = 0
for _, sha in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if new[sha] then
    new[sha] = nil
  else
    redis.call('SREM', KEYS[2], sha)
    redis.call('SREM', ARGV[2] .. sha, ARGV[1])
    changed = changed + 1
  end
end
for sha in pairs(new) do
  redis.call('SADD', KEYS[2], sha)
  redis.call('SADD', ARGV[2] .. sha, ARGV[1])
  changed = changed + 1
end
return changed
"""

# KEYS: engine:info, engine:seen, engine:load, resident:<engine>, loads:<engine>, reaped:<engine>:<token>,
#       reaped (zset). ARGV: engine id, holders key prefix, base set key prefix, cutoff ('' = regardless
#       of last-seen), now.
# Removes the engine from the registry and the placement index and detaches its load stream under a
# new name, all at once: a heartbeat after this says "register again", a re-registration gets a fresh
# stream, and exactly one caller wins (others get nil). The detached stream is recorded in the
# `reaped` zset as [key, engine, base] until it has been drained, so a reaper that dies mid-way is
# finished by the next one.
DROP_ENGINE = """
local info = redis.call('HGET', KEYS[1], ARGV[1])
if not info then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
if ARGV[4] ~= '' then
  local seen = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if seen and tonumber(seen) >= tonumber(ARGV[4]) then return false end
end
local base = cjson.decode(info)['base_model']
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SREM', ARGV[3] .. base, ARGV[1])
for _, sha in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  redis.call('SREM', ARGV[2] .. sha, ARGV[1])
end
redis.call('DEL', KEYS[4])
if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('RENAME', KEYS[5], KEYS[6]) end
local member = cjson.encode({KEYS[6], ARGV[1], base})
redis.call('ZADD', KEYS[7], ARGV[5], member)
return member
"""

# KEYS: reaped (zset). ARGV: member, cutoff, now.
# Takes over draining a detached stream whose reaper has not finished by the cutoff (1, or 0 when it
# is gone or fresh): the lease is the member's score.
LEASE_DRAIN = """
local since = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not since or tonumber(since) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: engine:info, loads:<engine>. ARGV: engine id, group, then the entry's field/value pairs.
# Queues a load only for a registered engine (its stream and group are created on first use); the
# entry id, or nil when the engine is unknown, so nothing is queued where no one will read it.
ENQUEUE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return false end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[2], '0', 'MKSTREAM')
end
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
"""

# KEYS: engine:info, resident:<engine>, holders:<adapter key>, failure:<adapter key>. ARGV: engine id, adapter key.
# A load finished: the engine holds the adapter from now on (not only from its next report), and an
# earlier failure of the adapter is forgotten.
LOADED = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('SADD', KEYS[3], ARGV[1])
end
redis.call('DEL', KEYS[4])
return 1
"""

# KEYS: wave:<id>:engine, wave:<id>:state, wave:<id>:bytes. ARGV: adapter key, engine the item is on, new
# state, engine it goes to (the same when it stays), size, -size.
# Updates one wave item only if it is still where the caller saw it: an ack from an engine that no
# longer owns the item (re-placed meanwhile) changes nothing. Writes only to existing hashes, so an
# expired wave stays expired.
WAVE_ITEM = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if ARGV[4] ~= ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
  redis.call('HINCRBY', KEYS[3], ARGV[2], ARGV[6])
  redis.call('HINCRBY', KEYS[3], ARGV[4], ARGV[5])
end
return 1
"""

# KEYS: waves:<base>. ARGV: the open wave's field (<tenant>/<name>), wave id.
# Forgets an expired open wave unless a new wave of the same name has replaced it meanwhile.
CLOSE_WAVE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

# KEYS: engine:base:<base>, engine:seen, engine:load, engine:info, holders:<adapter key>, assigned:<adapter key>, then the
#       adapter's request counters from this second back over the hot window. ARGV: cutoff, counter ttl (s).
# Everything routing needs in one round trip: the live engines of the base with their loads and infos
# (addresses), the adapter's holders and recent assignment, and its requests in the window counting this one.
ROUTE_STATE = """
local live, loads, infos = {}, {}, {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local seen = redis.call('ZSCORE', KEYS[2], id)
  local info = redis.call('HGET', KEYS[4], id)
  if seen and info and tonumber(seen) >= tonumber(ARGV[1]) then
    live[#live + 1] = id
    loads[#loads + 1] = redis.call('HGET', KEYS[3], id) or ''
    infos[#infos + 1] = info
  end
end
redis.call('INCR', KEYS[7])
redis.call('EXPIRE', KEYS[7], ARGV[2])
local requests = 0
for i = 7, #KEYS do requests = requests + (tonumber(redis.call('GET', KEYS[i])) or 0) end
return {live, loads, infos, redis.call('SMEMBERS', KEYS[5]), redis.call('GET', KEYS[6]) or '', requests}
"""
