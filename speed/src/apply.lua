-- Apply one chunk of counter deltas for one partition, fenced on its offset.
-- All keys are derived by tally_core::keys and passed in ARGV (single-node Redis).
--
-- ARGV: offsets_hash, partition_field, start, end, fresh(0|1), now_ms, tmp_key,
--       then per slice: 'S', counters_key, sketch_index_key, sketch_prefix,
--                       slices_zset, slice_member, expire_at_ms, n_ops,
--                       then n_ops ops of 3 arguments each:
--                         'I' field int     HINCRBY
--                         'F' field float   HINCRBYFLOAT
--                         'N' field number  keep the minimum
--                         'X' field number  keep the maximum
--                         'H' suffix bytes  merge a HyperLogLog (Redis encoding)
-- Returns {1, end} applied; {0, stored} fenced (stored ~= start);
--         {-1, -1} reset (no stored offset and the chunk is not a rebuild start).
local stored = redis.call('HGET', ARGV[1], ARGV[2])
if stored == false then
  if ARGV[5] ~= '1' then return {-1, -1} end
elseif stored ~= ARGV[3] then
  return {0, tonumber(stored)}
end
local now = tonumber(ARGV[6])
local tmp = ARGV[7]
local i = 8
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
    elseif op == 'H' then
      local key = prefix .. f
      if redis.call('EXISTS', key) == 0 then
        redis.call('SET', key, v)
      else
        redis.call('SET', tmp, v)
        redis.call('PFMERGE', key, tmp)
        redis.call('DEL', tmp)
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
redis.call('HSET', ARGV[1], ARGV[2], ARGV[4])
return {1, tonumber(ARGV[4])}
