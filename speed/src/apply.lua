-- Apply one chunk of counter deltas, fenced on the offsets of every partition
-- it covers: all of it or none of it.
-- All keys are derived by tally_core::keys and passed in ARGV (single-node Redis).
--
-- ARGV: offsets_hash, n_ranges,
--       then per range: partition_field, start, end, fresh(0|1),
--       then now_ms, tmp_key,
--       then per slice: 'S', counters_key, sketch_index_key, sketch_prefix,
--                       slices_zset, slice_member, expire_at_ms, n_ops,
--                       then n_ops ops:
--                         'I' field int     HINCRBY
--                         'F' field float   HINCRBYFLOAT
--                         'N' field number  keep the minimum
--                         'X' field number  keep the maximum
--                         'H' suffix bytes  merge a HyperLogLog (Redis encoding)
--                         'P' suffix n v1..vn  PFADD the n values
-- A range passes if Redis stores its start, or stores nothing and the range is
-- a rebuild start (fresh). Returns {1} applied (every range's end stored);
-- {0, s1, .., sn} not applied: what Redis stores per range (-1 for nothing).
local offsets = ARGV[1]
local n_ranges = tonumber(ARGV[2])
local ok = true
local stored = {0}
for r = 0, n_ranges - 1 do
  local b = 3 + r * 4
  local s = redis.call('HGET', offsets, ARGV[b])
  if s == false then
    stored[#stored + 1] = -1
    if ARGV[b + 3] ~= '1' then ok = false end
  else
    stored[#stored + 1] = tonumber(s)
    if s ~= ARGV[b + 1] then ok = false end
  end
end
if not ok then return stored end
local i = 3 + n_ranges * 4
local now = tonumber(ARGV[i])
local tmp = ARGV[i + 1]
i = i + 2
-- PFMERGE into a *sparse* key rewrites every register the result holds, each
-- through a scan of the sparse encoding: quadratic in the key's size, and 80%
-- of Redis's CPU in the drain benchmark. With a dense input Redis first makes
-- the key dense, and the merge is one pass over the registers. So a sparse key
-- past DENSIFY_AT bytes (where the quadratic merge starts to cost more than the
-- dense one) is merged together with an empty dense sketch. Redis makes sparse
-- keys dense at 3,000 bytes anyway (hll-sparse-max-bytes); this trades some
-- memory on keys between the two sizes for CPU.
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
while i <= #ARGV do
  local ckey, idx, prefix, zset, member = ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  local exp = ARGV[i+6]
  local n = tonumber(ARGV[i+7])
  i = i + 8
  local wrote_counter, wrote_sketch = false, false
  for _ = 1, n do
    local op, f, v = ARGV[i], ARGV[i+1], ARGV[i+2]
    i = i + 3
    if op == 'I' then
      redis.call('HINCRBY', ckey, f, v); wrote_counter = true
    elseif op == 'F' then
      redis.call('HINCRBYFLOAT', ckey, f, v); wrote_counter = true
    elseif op == 'N' or op == 'X' then
      local cur = redis.call('HGET', ckey, f)
      local x = tonumber(v)
      if cur == false or (op == 'N' and x < tonumber(cur)) or (op == 'X' and x > tonumber(cur)) then
        redis.call('HSET', ckey, f, v)
      end
      wrote_counter = true
    else
      local key = prefix .. f
      if op == 'P' then
        local k = tonumber(v)
        redis.call('PFADD', key, unpack(ARGV, i, i + k - 1))
        i = i + k
      else
        local len = redis.call('STRLEN', key)
        if len == 0 then
          redis.call('SET', key, v)
        else
          redis.call('SET', tmp, v)
          if len > DENSIFY_AT and len ~= DENSE_LEN then
            redis.call('PFMERGE', key, tmp, densifier())
          else
            redis.call('PFMERGE', key, tmp)
          end
          redis.call('DEL', tmp)
        end
      end
      redis.call('PEXPIREAT', key, exp)
      redis.call('SADD', idx, f)
      wrote_sketch = true
    end
  end
  if wrote_counter then redis.call('PEXPIREAT', ckey, exp) end
  if wrote_sketch then redis.call('PEXPIREAT', idx, exp) end
  redis.call('ZADD', zset, exp, member)
  redis.call('ZREMRANGEBYSCORE', zset, '-inf', '(' .. now)
end
if dense_empty ~= nil then redis.call('DEL', dense_empty) end
for r = 0, n_ranges - 1 do
  local b = 3 + r * 4
  redis.call('HSET', offsets, ARGV[b], ARGV[b + 2])
end
return {1}
