"""The Lua scripts of the shared state: one ``EVALSHA`` per operation, atomic in Redis.

Every script takes the key prefix ``isched:{<namespace>}:`` as ``ARGV[1]`` and builds its
keys from it (hence standalone Redis or Valkey: a cluster would need every key in
``KEYS``; the ``{namespace}`` hash tag keeps a namespace in one slot all the same). Times
come from Redis's ``TIME``, so the replicas' clocks never meet.

Keys (``<p>`` = the prefix; endpoint names are the table's names, never rows):

* ``<p>h:<hash>``: STRING, the ids of the endpoints holding block ``<hash>``, 4
  little-endian bytes each (``<hash>`` is the uint64 as 8 raw little-endian bytes, or its
  decimal digits with the ``decimal`` encoding, kept for comparison). A string rather
  than a SET: a match reads all its blocks with one ``MGET`` and returns them as one
  string, where ``SMEMBERS`` per block cost 4x more in Redis. Deleted when it empties.
* ``<p>lru:<endpoint>``: ZSET hash -> use stamp, the endpoint's LRU (lowest = least
  recently used); ``<p>ctr`` HASH endpoint -> last stamp; ``<p>eps`` HASH endpoint ->
  LRU capacity (fixed at creation, as in ``PrefixIndex``); ``<p>ids`` HASH endpoint ->
  id, ``<p>names`` HASH id -> endpoint, ``<p>nextid`` the last id given; ``<p>epoch``
  names the id space (set with the first id): ids are never reused within an epoch, so
  replicas cache id -> name and drop the cache when the epoch changes (Redis restarted
  empty, or the namespace was cleared).
* ``<p>seen``: ZSET endpoint -> last time (ms) a replica had it in its table or added to
  it; endpoints unseen for the TTL are forgotten.
* ``<p>inflight``: HASH ``<endpoint>:req`` / ``<endpoint>:tok`` -> totals over replicas.
* ``<p>holds:<replica>``: HASH, same fields: that replica's share of the totals;
  ``<p>seqs:<replica>``: HASH endpoint -> sequence number of the share last applied;
  ``<p>leases``: ZSET replica -> lease expiry (ms).

Small hashes are listpacks, where a field lookup is a linear scan: scripts read a whole
hash once (``HGETALL``) rather than many fields one by one (``HMGET`` of 512 fields of a
512-entry listpack took 1.5 ms).
"""

from __future__ import annotations

from typing import Final

__all__ = ["SCRIPTS"]

_PRELUDE: Final = r"""
-- unpack() is limited by Lua's C stack (about 8000 values): call in chunks.
local CHUNK = 2000
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function epoch(p)
  return redis.call('GET', p .. 'epoch') or ''
end
local function hash_list(enc, blob)
  local out = {}
  if enc == 'b' then
    for i = 1, #blob, 8 do out[#out + 1] = string.sub(blob, i, i + 7) end
  else
    for h in string.gmatch(blob, '[^,]+') do out[#out + 1] = h end
  end
  return out
end
local function name_list(blob)
  local out = {}
  for e in string.gmatch(blob, '[^\n]+') do out[#out + 1] = e end
  return out
end
-- Each redis.call costs about a microsecond: batch them (MGET, MSET, DEL of many keys).
local function call_chunked(cmd, args, head)
  for c = 1, #args, CHUNK do
    if head then
      redis.call(cmd, head, unpack(args, c, math.min(c + CHUNK - 1, #args)))
    else
      redis.call(cmd, unpack(args, c, math.min(c + CHUNK - 1, #args)))
    end
  end
end
local function mget(keys)
  local out = {}
  for c = 1, #keys, CHUNK do
    local vals = redis.call('MGET', unpack(keys, c, math.min(c + CHUNK - 1, #keys)))
    for j = 1, #vals do out[c + j - 1] = vals[j] end
  end
  return out
end
local function find_id(v, id)  -- byte offset of id in v, 4-byte aligned, or nil
  local from = 1
  while true do
    local i = string.find(v, id, from, true)
    if i == nil or (i - 1) % 4 == 0 then return i end
    from = i + 1
  end
end
-- Remove endpoint id from the holder strings of hashes (evicted or forgotten).
local function drop_holder(ph, hashes, id)
  if #hashes == 0 then return end
  local keys = {}
  for i, h in ipairs(hashes) do keys[i] = ph .. h end
  local vals = mget(keys)
  local sets, dels = {}, {}
  for i, key in ipairs(keys) do
    local v = vals[i]
    local at = v and find_id(v, id)
    if at then
      if #v == 4 then
        dels[#dels + 1] = key
      else
        sets[#sets + 1] = key
        sets[#sets + 1] = string.sub(v, 1, at - 1) .. string.sub(v, at + 4)
      end
    end
  end
  call_chunked('MSET', sets)
  call_chunked('DEL', dels)
end
-- Fields of a hash as a Lua table: one HMGET for a few, one HGETALL for many (a small
-- hash is a listpack, where each field of an HMGET is a linear scan).
local function fields_of(key, names)
  local out = {}
  if #names > 8 then
    local all = redis.call('HGETALL', key)
    for j = 1, #all, 2 do out[all[j]] = all[j + 1] end
  elseif #names > 0 then
    local vals = redis.call('HMGET', key, unpack(names))
    for j, f in ipairs(names) do out[f] = vals[j] end
  end
  return out
end
-- A replica's absolute share (argv[from..]: endpoint, requests, tokens triples) as of
-- sequence number seq: endpoints whose applied share is as new are left alone; the
-- totals move by the differences, never below 0; the lease is renewed.
local function publish_share(p, r, lease_ms, seq, argv, from)
  redis.call('ZADD', p .. 'leases', now_ms() + tonumber(lease_ms), r)
  local holds, seqs, total = p .. 'holds:' .. r, p .. 'seqs:' .. r, p .. 'inflight'
  local eps, fields = {}, {}
  for i = from, #argv, 3 do
    eps[#eps + 1] = argv[i]
    fields[#fields + 1] = argv[i] .. ':req'
    fields[#fields + 1] = argv[i] .. ':tok'
  end
  local last, old = fields_of(seqs, eps), fields_of(holds, fields)
  local new_seqs, sets, dels = {}, {}, {}
  local n = tonumber(seq)
  for k, e in ipairs(eps) do
    if n > (tonumber(last[e]) or -1) then
      new_seqs[#new_seqs + 1] = e
      new_seqs[#new_seqs + 1] = seq
      for j = 0, 1 do
        local f = fields[2 * k - 1 + j]
        local v = tonumber(argv[from + 3 * (k - 1) + 1 + j])
        local o = tonumber(old[f]) or 0
        if v ~= o then
          if v > 0 then
            sets[#sets + 1] = f
            sets[#sets + 1] = v
          else
            dels[#dels + 1] = f
          end
          local t = tonumber(redis.call('HINCRBYFLOAT', total, f, v - o))
          if t < 1e-9 then redis.call('HDEL', total, f) end
        end
      end
    end
  end
  call_chunked('HSET', new_seqs, seqs)
  call_chunked('HSET', sets, holds)
  call_chunked('HDEL', dels, holds)
  return #new_seqs / 2
end
local function read_totals(p, blob)
  local all = redis.call('HGETALL', p .. 'inflight')
  local totals = {}
  for j = 1, #all, 2 do totals[all[j]] = all[j + 1] end
  local out = {}
  for _, e in ipairs(name_list(blob)) do
    out[#out + 1] = totals[e .. ':req'] or '0'
    out[#out + 1] = totals[e .. ':tok'] or '0'
  end
  return table.concat(out, ' ')
end
local function drop_replica(p, r)
  local total = p .. 'inflight'
  local h = redis.call('HGETALL', p .. 'holds:' .. r)
  for j = 1, #h, 2 do
    local t = tonumber(redis.call('HINCRBYFLOAT', total, h[j], -tonumber(h[j + 1])))
    if t < 1e-9 then redis.call('HDEL', total, h[j]) end
  end
  redis.call('DEL', p .. 'holds:' .. r, p .. 'seqs:' .. r)
  redis.call('ZREM', p .. 'leases', r)
end
"""

# ARGV: prefix, 'c' (GIE counting) | 's' (strict prefix), then either 'k', the blocks' keys
# (fixed width, built by the caller: cheaper than building them here) and that width, or
# an encoding and the hashes. Returns {ids, lengths, epoch}: the holders of each leading
# block that has any, concatenated (4-byte ids), and in strict mode each block's holder
# count (2 bytes; the counting mode needs only the ids). The caller does the counting or
# takes the runs. Blocks are read 16, 32, 64, ... at a time: most walks end early.
_MATCH: Final = r"""
local strict = ARGV[2] == 's'
local keys = {}
if ARGV[3] == 'k' then
  local b, w = ARGV[4], tonumber(ARGV[5])
  for i = 1, #b, w do keys[#keys + 1] = string.sub(b, i, i + w - 1) end
else
  local ph = ARGV[1] .. 'h:'
  for i, h in ipairs(hash_list(ARGV[3], ARGV[4])) do keys[i] = ph .. h end
end
local parts, lens = {}, {}
local first, size = 1, 16
while first <= #keys do
  local last = math.min(first + size - 1, #keys)
  local vals = redis.call('MGET', unpack(keys, first, last))
  for j = 1, #vals do
    local v = vals[j]
    if not v then return {table.concat(parts), table.concat(lens), epoch(ARGV[1])} end
    parts[#parts + 1] = v
    if strict then lens[#lens + 1] = struct.pack('<H', #v / 4) end
  end
  first, size = last + 1, math.min(size * 2, CHUNK)
end
return {table.concat(parts), table.concat(lens), epoch(ARGV[1])}
"""

# ARGV: prefix, endpoint, capacity, encoding, hashes. Returns the number evicted.
_ADD: Final = r"""
local p, e = ARGV[1], ARGV[2]
local hashes = hash_list(ARGV[4], ARGV[5])
redis.call('ZADD', p .. 'seen', now_ms(), e)
local id = redis.call('HGET', p .. 'ids', e)
local cap
if id then
  cap = tonumber(redis.call('HGET', p .. 'eps', e))
else
  local n = redis.call('INCR', p .. 'nextid')
  if n == 1 then
    local t = redis.call('TIME')
    redis.call('SET', p .. 'epoch', t[1] .. '.' .. t[2])
  end
  id = struct.pack('<I', n)
  redis.call('HSET', p .. 'ids', e, id)
  redis.call('HSET', p .. 'names', id, e)
  redis.call('HSET', p .. 'eps', e, ARGV[3])
  cap = tonumber(ARGV[3])
end
local n = #hashes
if n == 0 then return 0 end
local base = redis.call('HINCRBY', p .. 'ctr', e, n) - n
local lru, ph = p .. 'lru:' .. e, p .. 'h:'
local keys = {}
for i, h in ipairs(hashes) do keys[i] = ph .. h end
local vals = mget(keys)
local seen, sets, scored = {}, {}, {}
for i, h in ipairs(hashes) do
  if not seen[h] then  -- a repeated hash: its first occurrence did the work
    seen[h] = true
    local v = vals[i]
    if not v then
      sets[#sets + 1] = keys[i]
      sets[#sets + 1] = id
    elseif find_id(v, id) == nil then
      sets[#sets + 1] = keys[i]
      sets[#sets + 1] = v .. id
    end
  end
  scored[#scored + 1] = base + i  -- the last occurrence wins: most recently used
  scored[#scored + 1] = h
end
call_chunked('MSET', sets)
call_chunked('ZADD', scored, lru)
local size = redis.call('ZCARD', lru)
if size <= cap then return 0 end
local gone = redis.call('ZPOPMIN', lru, size - cap)
local evicted = {}
for j = 1, #gone, 2 do evicted[#evicted + 1] = gone[j] end
drop_holder(ph, evicted, id)
return #evicted
"""

# ARGV: prefix, endpoint, cutoff ms ('' = unconditional), max entries to drop now.
# Returns {dropped, left}; left = -1 when the endpoint was seen after the cutoff (kept).
_FORGET: Final = r"""
local p, e = ARGV[1], ARGV[2]
if ARGV[3] ~= '' then
  local seen = tonumber(redis.call('ZSCORE', p .. 'seen', e))
  if seen ~= nil and seen > tonumber(ARGV[3]) then return {0, -1} end
end
local id = redis.call('HGET', p .. 'ids', e)
local lru = p .. 'lru:' .. e
local gone = redis.call('ZPOPMIN', lru, tonumber(ARGV[4]))
if id then
  local hashes = {}
  for j = 1, #gone, 2 do hashes[#hashes + 1] = gone[j] end
  drop_holder(p .. 'h:', hashes, id)
end
local left = redis.call('ZCARD', lru)
if left == 0 then
  redis.call('HDEL', p .. 'eps', e)
  redis.call('HDEL', p .. 'ctr', e)
  redis.call('HDEL', p .. 'ids', e)
  if id then redis.call('HDEL', p .. 'names', id) end
  redis.call('ZREM', p .. 'seen', e)
end
return {#gone / 2, left}
"""

# ARGV: prefix, endpoint names ('\n'-separated), TTL ms, max names returned.
# Marks the names seen now; returns {cutoff ms, endpoint unseen since the cutoff, ...}.
_SEEN: Final = r"""
local p = ARGV[1]
local now = now_ms()
local args = {}
for _, e in ipairs(name_list(ARGV[2])) do
  args[#args + 1] = now
  args[#args + 1] = e
  if #args >= CHUNK then redis.call('ZADD', p .. 'seen', unpack(args)); args = {} end
end
if #args > 0 then redis.call('ZADD', p .. 'seen', unpack(args)) end
local cutoff = now - tonumber(ARGV[3])
local out = {cutoff}
local stale = redis.call('ZRANGEBYSCORE', p .. 'seen', '-inf', '(' .. cutoff, 'LIMIT', 0,
  tonumber(ARGV[4]))
for _, e in ipairs(stale) do out[#out + 1] = e end
return out
"""

# ARGV: prefix, replica, lease TTL ms, sequence number, then (endpoint, requests, tokens)
# triples: the replica's *absolute* share for those endpoints as of that sequence number.
# A share older than the one already applied for an endpoint is ignored, so replays,
# reordered calls and the heartbeat's full snapshot all converge. Returns shares applied.
_PUBLISH: Final = r"""
return publish_share(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV, 5)
"""

# ARGV: prefix, max replicas. Subtracts the shares of replicas whose lease expired.
_REAP: Final = r"""
local p = ARGV[1]
local dead = redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', '(' .. now_ms(), 'LIMIT', 0,
  tonumber(ARGV[2]))
for _, r in ipairs(dead) do drop_replica(p, r) end
return dead
"""

# ARGV: prefix, replica. A replica leaving cleanly withdraws its share at once.
_RETIRE: Final = r"""
drop_replica(ARGV[1], ARGV[2])
return 1
"""

# ARGV: prefix, endpoint names ('\n'-separated)[, replica, lease TTL ms, sequence number,
# triples as in publish]. Publishes the replica's pending share, if given, then returns the
# totals "req tok req tok ..." in the names' order: a decision's one round trip, which
# always includes the replica's own earlier picks.
_SYNC: Final = r"""
if #ARGV > 2 then publish_share(ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV, 6) end
return read_totals(ARGV[1], ARGV[2])
"""

# ARGV: prefix, endpoint ids (4 bytes each). Returns {epoch, {name or nil, ...}}.
_NAMES: Final = r"""
local b = ARGV[2]
local ids = {}
for i = 1, #b, 4 do ids[#ids + 1] = string.sub(b, i, i + 3) end
return {epoch(ARGV[1]), redis.call('HMGET', ARGV[1] .. 'names', unpack(ids))}
"""

SCRIPTS: Final = {
    name: _PRELUDE + body
    for name, body in {
        "match": _MATCH,
        "add": _ADD,
        "forget": _FORGET,
        "seen": _SEEN,
        "publish": _PUBLISH,
        "reap": _REAP,
        "retire": _RETIRE,
        "sync": _SYNC,
        "names": _NAMES,
    }.items()
}
"""Script name -> Lua source (the shared prelude included)."""
