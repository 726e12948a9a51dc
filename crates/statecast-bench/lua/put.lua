-- wrk script: PUT /v1/profiles/{prefix}{n} (a full replacement) for n uniform in
-- [0, BENCH_PROFILES), and the shared done() hook.
local n = tonumber(os.getenv("BENCH_PROFILES") or "10000")
local prefix = os.getenv("BENCH_PREFIX") or "bench-"
local headers = { ["Content-Type"] = "application/json" }
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0))
end

function request()
  local i = math.random(0, n - 1)
  local body = string.format(
    '{"name":"Bench User %d","email":"bench-%d@bench.example.com","country":"PT"}', i, i)
  return wrk.format("PUT", "/v1/profiles/" .. prefix .. i, headers, body)
end

dofile((os.getenv("BENCH_LUA_DIR") or ".") .. "/done.lua")
