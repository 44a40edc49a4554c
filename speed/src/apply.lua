-- Apply one partition group's part of a chunk of counter deltas, fenced on
-- the offsets of every partition it covers: all of it or none of it.
-- All keys are derived by tally_core::keys and passed in ARGV. KEYS[1] is the
-- group's offsets hash (ARGV[1] too), declared so that a Redis Cluster routes
-- the call to the group's slot: every key in ARGV carries the group's hash
-- tag, so all of them live in that slot (on a single Redis with one group
-- they are untagged).
--
-- ARGV: offsets_hash, n_ranges,
--       then per range: partition_field, start, end, fresh(0|1),
--       then now_ms, tmp_key, version_key, seen_hash,
--       then defs_hash, n_defs, then per view: name, definition fingerprint,
--       then per slice: 'S', counters_key, cells_key, sketch_prefix,
--                       slices_zset, slice_member, versions_hash, expire_at_ms,
--                       quantile_log ('' for a view without quantiles),
--                       quantile_log_body, sketch_log ('' for a view
--                       without distinct measures), sketch_log_body,
--                       counter_log ('' for a view without counters),
--                       counter_log_fields (the counter fields the 'I',
--                       'S' (value and carry), 'F', 'N' and 'X' ops write,
--                       one line each, in order),
--                       n_ops, then n_ops ops:
--                         'I' field n             add to a count (HINCRBY)
--                         'S' field carry lo hi   add lo + hi * 2^62 to an exact
--                                                 integer sum stored as
--                                                 field + carry * 2^62 (|lo| < 2^62)
--                         'F' field float         HINCRBYFLOAT
--                         'N' field number        keep the minimum
--                         'X' field number        keep the maximum
--                         'H' suffix bytes        merge a HyperLogLog (Redis encoding)
--                         'P' suffix n v1..vn     PFADD the n values
--                         'Q' key n b1 c1..bn cn  add counts to a quantile sketch,
--                                                 a hash of bucket -> count (HINCRBY)
--                       then n_cells, then the n_cells cells ({bucket}|{group})
--                       the ops write.
-- A range passes if Redis stores its start, or stores nothing and the range is
-- a rebuild start (fresh).
-- Returns {1} applied (every range's end stored);
--         {0, s1, .., sn} not applied: what Redis stores per range (-1 for nothing);
--         {2, reason} not applied: Redis holds a value Tally did not write there;
--         {3, reason} not applied: Redis lost part of what Tally wrote;
--         {4, reason} not applied: a view's slices in Redis were computed with
--                     another definition (defs_hash): this writer's config
--                     is not the one the speed layer runs with.
--
-- Partial loss. Offsets and counters must live and vanish together; a Redis
-- that evicts keys (or an operator's DEL) can break that, and rebuilding over
-- what is left would count records twice or miss them silently. So:
-- - seen_hash records every partition whose offset was stored, in the same
--   call: an offset missing while seen_hash has its field was lost while the
--   counters it covers stayed (rebuilding would count them twice);
-- - a slice this call writes again, whose versions entry and slice-set
--   score say it is still due to live, must still have its cell set: if not,
--   its keys were lost before their time (silently missing counts).
-- Either is reported instead of written over.
--
-- Every applied call takes the next version (field 'v' of version_key) and
-- marks each slice it writes (versions_hash) and each of its cells (cells_key,
-- scored by version) with it, so that a reader re-reads only what changed
-- (tally_core::keys). A slice of a view with quantile measures also gets an
-- entry in its quantile log: the slice's previous version and the body the
-- writer built from the 'Q' ops (tally_core::quantile::delta_log), so that a
-- reader adds what changed instead of reading each sketch whole. A slice of
-- a view with distinct measures gets the same in its sketch log, with the
-- body the writer built from the 'P' and 'H' ops (the registers they set:
-- tally_core::hll::sketch_log). A slice of a view with counters gets an
-- entry in its counter log: the fields the writer listed, preceded by their
-- new values, which only this script learns (tally_core::counter_log), so
-- that a reader learns the values with the versions instead of in a
-- second read.
--
-- Redis keeps the writes of a script that fails half-way, so the script
-- checks everything that could make a write fail before it writes anything:
-- the fence, the type of every key, and every counter field it will add to;
-- quantile buckets are checked by adding them first and taking them back if
-- one fails. After that the writes cannot fail (an integer sum that would pass 2^63
-- moves 2^62 into its carry field instead; Redis refuses an out-of-memory
-- script at its first write, before anything is written).
local offsets = ARGV[1]
local n_ranges = tonumber(ARGV[2])

local function invalid(reason)
  return {2, reason}
end

local function type_of(key)
  return redis.call('TYPE', key)['ok']
end

local function lost(reason)
  return {3, reason}
end

local head = 3 + n_ranges * 4
local seen, defs = ARGV[head + 3], ARGV[head + 4]
local n_defs = tonumber(ARGV[head + 5])
for _, key in ipairs({offsets, seen, defs}) do
  if not ({none = true, hash = true})[type_of(key)] then
    return invalid('key ' .. key .. ' is a ' .. type_of(key) .. ', not a hash')
  end
end
-- Every view as this writer defines it, as the speed layer last wrote it.
for d = 0, n_defs - 1 do
  local name, fp = ARGV[head + 6 + 2 * d], ARGV[head + 7 + 2 * d]
  local stored_fp = redis.call('HGET', defs, name)
  if stored_fp and stored_fp ~= fp then
    return {4, 'view ' .. name .. ' is defined as ' .. fp .. ' here but its slices in Redis were computed as ' .. stored_fp}
  end
end
local ok = true
local stored = {0}
for r = 0, n_ranges - 1 do
  local b = 3 + r * 4
  local s = redis.call('HGET', offsets, ARGV[b])
  if s == false then
    if redis.call('HEXISTS', seen, ARGV[b]) == 1 then
      return lost('the offset of ' .. ARGV[b] .. ' is gone from ' .. offsets .. ' but ' .. seen .. ' says it was stored: the counters it covers are still there')
    end
    stored[#stored + 1] = -1
    if ARGV[b + 3] ~= '1' then ok = false end
  else
    stored[#stored + 1] = tonumber(s)
    if s ~= ARGV[b + 1] then ok = false end
  end
end
if not ok then return stored end
local now = tonumber(ARGV[head])
local tmp = ARGV[head + 1]
local version_key = ARGV[head + 2]
local first_slice = head + 6 + 2 * n_defs
-- Redis's own clock: the one its expiries follow.
local clock = redis.call('TIME')
local redis_now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- The number of ARGV entries an op starting at i spans.
local function op_len(i)
  local op = ARGV[i]
  if op == 'S' then return 5 end
  if op == 'P' then return 3 + tonumber(ARGV[i + 2]) end
  if op == 'Q' then return 3 + 2 * tonumber(ARGV[i + 2]) end
  return 3
end

local function is_int(v)
  return string.find(v, '^%-?%d+$') ~= nil and #v <= 20
end

-- Counter values read while checking, per slice: reused by min and max.
local current = {}

-- Check every slice; write nothing.
local vt = type_of(version_key)
if vt ~= 'none' and vt ~= 'hash' then
  return invalid('key ' .. version_key .. ' is a ' .. vt .. ', not a hash')
end
local last_version = redis.call('HGET', version_key, 'v')
if last_version and not is_int(last_version) then
  return invalid('field v of ' .. version_key .. ' is not a version')
end
local i = first_slice
local slice = 0
while i <= #ARGV do
  slice = slice + 1
  local ckey, cells, prefix, zset, member, versions = ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6]
  local qlog, slog, clog = ARGV[i+8], ARGV[i+10], ARGV[i+12]
  local n = tonumber(ARGV[i+14])
  local want_types = {[ckey] = 'hash', [cells] = 'zset', [zset] = 'zset', [versions] = 'hash'}
  if qlog ~= '' then want_types[qlog] = 'zset' end
  if slog ~= '' then want_types[slog] = 'zset' end
  if clog ~= '' then want_types[clog] = 'zset' end
  for key, want in pairs(want_types) do
    local t = type_of(key)
    if t ~= 'none' and t ~= want then
      return invalid('key ' .. key .. ' is a ' .. t .. ', not a ' .. want)
    end
  end
  if redis.call('HEXISTS', versions, member) == 1 then
    local due = redis.call('ZSCORE', zset, member)
    if due and tonumber(due) > redis_now + 1000 and redis.call('EXISTS', cells) == 0 then
      return lost('slice ' .. member .. ' of ' .. zset .. ' lost its keys before they were due to expire')
    end
  end
  i = i + 15
  local fields = {}
  local ops_at = i
  for _ = 1, n do
    local op = ARGV[i]
    if op == 'S' then
      fields[#fields + 1] = ARGV[i + 1]
      fields[#fields + 1] = ARGV[i + 2]
    elseif op == 'I' or op == 'F' or op == 'N' or op == 'X' then
      fields[#fields + 1] = ARGV[i + 1]
    elseif op == 'Q' then
      -- A quantile sketch: a hash. Its type and buckets are checked as
      -- they are added, first thing in the writes.
    else
      local key = prefix .. ARGV[i + 1]
      local head = redis.pcall('GETRANGE', key, 0, 3)
      if type(head) == 'table' or (head ~= '' and head ~= 'HYLL') then
        return invalid('key ' .. key .. ' is not a HyperLogLog')
      end
    end
    i = i + op_len(i)
  end
  -- HMGET in parts: Lua unpacks at most a few thousand values at a time.
  local values = {}
  for a = 1, #fields, 1000 do
    local b = math.min(a + 999, #fields)
    local got = redis.call('HMGET', ckey, unpack(fields, a, b))
    for k = a, b do values[fields[k]] = got[k - a + 1] end
  end
  current[slice] = values
  i = ops_at
  for _ = 1, n do
    local op, f = ARGV[i], ARGV[i + 1]
    local v = values[f]
    if op == 'S' then
      local c = values[ARGV[i + 2]]
      if (v and not is_int(v)) or (c and not is_int(c)) then
        return invalid('field ' .. f .. ' of ' .. ckey .. ' is not an integer sum')
      end
    elseif op == 'I' then
      if v and not (is_int(v) and math.abs(tonumber(v)) + math.abs(tonumber(ARGV[i + 2])) < 9.2e18) then
        return invalid('field ' .. f .. ' of ' .. ckey .. ' is not a count')
      end
    elseif (op == 'F' or op == 'N' or op == 'X') and v then
      local x = tonumber(v)
      if x == nil or x ~= x then
        return invalid('field ' .. f .. ' of ' .. ckey .. ' is not a number')
      end
    end
    i = i + op_len(i)
  end
  i = i + 1 + tonumber(ARGV[i])
end

-- PFMERGE into a *sparse* key rewrites every register the result holds, each
-- through a scan of the sparse encoding: quadratic in the key's size, and 80%
-- of Redis's CPU in the drain benchmark. With a dense input Redis first makes
-- the key dense, and the merge is one pass over the registers. So a sparse key
-- past DENSIFY_AT bytes (where the quadratic merge starts to cost more than the
-- dense one) is merged together with an empty dense sketch. Redis makes sparse
-- keys dense at 3,000 bytes anyway (hll-sparse-max-bytes); this trades some
-- memory on keys between the two sizes for CPU.
-- tally_core::slice_log::LOG_LEN, substituted by the writer.
local LOG_LEN = tonumber('@LOG_LEN@')
local DENSE_LEN = 12304 -- 16-byte header + 16,384 six-bit registers
local DENSIFY_AT = 300
local dense_empty = nil
local function densifier()
  if dense_empty == nil then
    dense_empty = tmp .. ':dense'
    -- "HYLL", encoding 0 (dense), 3 unused bytes, a valid cached cardinality of 0.
    redis.call('SET', dense_empty, 'HYLL' .. string.rep('\0', DENSE_LEN - 4))
  end
  return dense_empty
end

-- 2^62 as Redis reads integers (a Lua number would be sent as 4.6e+18).
local CARRY_UNIT = {['+'] = '4611686018427387904', ['-'] = '-4611686018427387904'}

-- An integer Redis returned, as exact text for the counter log: Lua holds
-- it as a double, exact below 2^53 (tostring would round past 10^14).
local function int_text(x)
  if x > -9007199254740992 and x < 9007199254740992 then
    return string.format('%.0f', x)
  end
  return '?'
end

-- Add lo (|lo| < 2^62) to an integer sum field. When the field would pass
-- 2^63, 2^62 of it moves to the carry field first: the field then holds less
-- than 2^62 and the addition fits. Returns the field's new value and the
-- carry's (`was`, its text before, when the call left it alone).
local function add_to_sum(ckey, f, carry, lo, hi, was)
  local c = was
  local r = redis.pcall('HINCRBY', ckey, f, lo)
  if type(r) == 'table' then
    local sign = string.sub(lo, 1, 1) == '-' and '-' or '+'
    redis.call('HINCRBY', ckey, f, CARRY_UNIT[sign == '+' and '-' or '+'])
    c = redis.call('HINCRBY', ckey, carry, sign == '+' and 1 or -1)
    r = redis.call('HINCRBY', ckey, f, lo)
  end
  if hi ~= '0' then c = redis.call('HINCRBY', ckey, carry, hi) end
  return r, c
end

-- Call f(key, bucket, count) for every bucket of every 'Q' op, in order,
-- until it returns false.
local function each_quantile_bucket(f)
  local j = first_slice
  while j <= #ARGV do
    local n = tonumber(ARGV[j + 14])
    j = j + 15
    for _ = 1, n do
      if ARGV[j] == 'Q' then
        for k = 1, tonumber(ARGV[j + 2]) do
          if not f(ARGV[j + 1], ARGV[j + 1 + 2 * k], ARGV[j + 2 + 2 * k]) then return end
        end
      end
      j = j + op_len(j)
    end
    j = j + 1 + tonumber(ARGV[j])
  end
end

-- Write. Quantile buckets first, each checked by its own HINCRBY: reading
-- every bucket beforehand cost one HMGET per sketch (a tenth of the
-- script's time at 60,000 events/s: BENCHMARKS.md), and a TYPE per sketch
-- another 2 %. A sketch that is not a hash, or a bucket that is not a
-- count (or would pass 2^63), fails its HINCRBY; the buckets added before it are taken back
-- (subtracting what was just added cannot fail; a field that was absent is
-- removed again, and a hash left empty with it) and the call applies
-- nothing. Any other error (out of memory) is returned as it is, also with
-- nothing applied.
local added, failed, bad, bad_key = 0, nil, nil, nil
each_quantile_bucket(function(key, b, c)
  local r = redis.pcall('HINCRBY', key, b, c)
  if type(r) == 'table' then
    failed = r
    bad, bad_key = 'field ' .. b .. ' of ' .. key .. ' is not a count', key
    return false
  end
  added = added + 1
  return true
end)
if failed then
  each_quantile_bucket(function(key, b, c)
    if added == 0 then return false end
    added = added - 1
    if redis.call('HINCRBY', key, b, '-' .. c) == 0 then redis.call('HDEL', key, b) end
    return true
  end)
  local e = tostring(failed.err)
  if string.find(e, 'WRONGTYPE', 1, true) then
    return invalid('key ' .. bad_key .. ' is a ' .. type_of(bad_key) .. ', not a hash')
  end
  if string.find(e, 'not an integer', 1, true) or string.find(e, 'overflow', 1, true) then
    return invalid(bad)
  end
  return failed
end
for d = 0, n_defs - 1 do
  redis.call('HSET', defs, ARGV[head + 6 + 2 * d], ARGV[head + 7 + 2 * d])
end
local version = redis.call('HINCRBY', version_key, 'v', 1)
if version == 1 then redis.call('HSET', version_key, 'born', now) end
i = first_slice
slice = 0
while i <= #ARGV do
  slice = slice + 1
  local ckey, cells, prefix, zset, member = ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  local versions, exp = ARGV[i+6], ARGV[i+7]
  local qlog, qbody, slog, sbody = ARGV[i+8], ARGV[i+9], ARGV[i+10], ARGV[i+11]
  local clog, cfields = ARGV[i+12], ARGV[i+13]
  local n = tonumber(ARGV[i+14])
  local values = current[slice]
  i = i + 15
  local wrote_counter = false
  -- The counter log's values, one per field the writer listed, joined once.
  local cvals, nv = {}, 0
  for _ = 1, n do
    local op, f, v = ARGV[i], ARGV[i+1], ARGV[i+2]
    local len = op_len(i)
    if op == 'I' then
      nv = nv + 1; cvals[nv] = int_text(redis.call('HINCRBY', ckey, f, v))
      wrote_counter = true
    elseif op == 'S' then
      local r, c = add_to_sum(ckey, f, v, ARGV[i+3], ARGV[i+4], values[v] or '0')
      cvals[nv + 1] = int_text(r)
      cvals[nv + 2] = type(c) == 'number' and int_text(c) or c
      nv = nv + 2
      wrote_counter = true
    elseif op == 'F' then
      nv = nv + 1; cvals[nv] = redis.call('HINCRBYFLOAT', ckey, f, v)
      wrote_counter = true
    elseif op == 'N' or op == 'X' then
      local cur = values[f]
      local x = tonumber(v)
      if cur == false or cur == nil or (op == 'N' and x < tonumber(cur)) or (op == 'X' and x > tonumber(cur)) then
        redis.call('HSET', ckey, f, v)
        nv = nv + 1; cvals[nv] = v
      else
        nv = nv + 1; cvals[nv] = '='
      end
      wrote_counter = true
    elseif op == 'Q' then
      -- Its buckets were added first.
      redis.call('PEXPIREAT', f, exp)
    else
      local key = prefix .. f
      if op == 'P' then
        redis.call('PFADD', key, unpack(ARGV, i + 3, i + len - 1))
      else
        local klen = redis.call('STRLEN', key)
        if klen == 0 then
          redis.call('SET', key, v)
        else
          redis.call('SET', tmp, v)
          if klen > DENSIFY_AT and klen ~= DENSE_LEN then
            redis.call('PFMERGE', key, tmp, densifier())
          else
            redis.call('PFMERGE', key, tmp)
          end
          redis.call('DEL', tmp)
        end
      end
      redis.call('PEXPIREAT', key, exp)
    end
    i = i + len
  end
  if wrote_counter then redis.call('PEXPIREAT', ckey, exp) end
  -- The cells, scored by this version, a few hundred per call (Lua unpacks
  -- at most a few thousand values at a time).
  local n_cells = tonumber(ARGV[i])
  local batch = {}
  for c = i + 1, i + n_cells do
    batch[#batch + 1] = version
    batch[#batch + 1] = ARGV[c]
    if #batch == 1000 then
      redis.call('ZADD', cells, unpack(batch))
      batch = {}
    end
  end
  if #batch > 0 then redis.call('ZADD', cells, unpack(batch)) end
  if n_cells > 0 then redis.call('PEXPIREAT', cells, exp) end
  i = i + 1 + n_cells
  local prev = (qlog ~= '' or slog ~= '' or clog ~= '') and (redis.call('HGET', versions, member) or '0')
  if qlog ~= '' then
    redis.call('ZADD', qlog, version, prev .. '\n' .. qbody)
    redis.call('ZREMRANGEBYRANK', qlog, 0, -(LOG_LEN + 1))
    redis.call('PEXPIREAT', qlog, exp)
  end
  if slog ~= '' then
    redis.call('ZADD', slog, version, prev .. '\n' .. sbody)
    redis.call('ZREMRANGEBYRANK', slog, 0, -(LOG_LEN + 1))
    redis.call('PEXPIREAT', slog, exp)
  end
  if clog ~= '' then
    redis.call('ZADD', clog, version, prev .. '\n' .. table.concat(cvals, '\t') .. '\n' .. cfields)
    redis.call('ZREMRANGEBYRANK', clog, 0, -(LOG_LEN + 1))
    redis.call('PEXPIREAT', clog, exp)
  end
  redis.call('HSET', versions, member, version)
  redis.call('ZADD', zset, exp, member)
  -- Expired slices leave the slice set and the versions hash together.
  local gone = redis.call('ZRANGEBYSCORE', zset, '-inf', '(' .. now, 'LIMIT', 0, 1000)
  if #gone > 0 then
    redis.call('ZREM', zset, unpack(gone))
    redis.call('HDEL', versions, unpack(gone))
  end
end
if dense_empty ~= nil then redis.call('DEL', dense_empty) end
for r = 0, n_ranges - 1 do
  local b = 3 + r * 4
  redis.call('HSET', offsets, ARGV[b], ARGV[b + 2])
  redis.call('HSET', seen, ARGV[b], 1)
end
return {1}
