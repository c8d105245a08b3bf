local n = #KEYS - 2
for i = 1, n do
  local current = redis.call('HGET', KEYS[i + 2], 'v')
  if ARGV[4 * i - 3] == 'p' and ARGV[4 * i - 2] == '' then
    if current then return false end
  elseif current ~= ARGV[4 * i - 2] then
    return false
  end
end
local versions = {}
for i = 1, n do
  if ARGV[4 * i - 3] == 'p' then
    versions[i] = redis.call('INCR', KEYS[1])
    redis.call('HSET', KEYS[i + 2], 'v', versions[i], 'd', ARGV[4 * i - 1])
    redis.call('ZADD', KEYS[2], 0, ARGV[4 * i])
  else
    versions[i] = 0
    redis.call('DEL', KEYS[i + 2])
    redis.call('ZREM', KEYS[2], ARGV[4 * i])
  end
end
return versions
