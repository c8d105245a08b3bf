local current = redis.call('HGET', KEYS[1], 'v')
if ARGV[2] == '' then
  if current then return -1 end
elseif current ~= ARGV[2] then
  return -1
end
local version = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'v', version, 'd', ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
return version
