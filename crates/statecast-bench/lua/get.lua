-- wrk script: GET /v1/profiles/{prefix}{n} for n uniform in [0, BENCH_PROFILES), and a done()
-- hook that writes the summary and latency percentiles (microseconds) as JSON to WRK_JSON.
local n = tonumber(os.getenv("BENCH_PROFILES") or "10000")
local prefix = os.getenv("BENCH_PREFIX") or "bench-"
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0))
end

function request()
  return wrk.format("GET", "/v1/profiles/" .. prefix .. math.random(0, n - 1))
end

dofile((os.getenv("BENCH_LUA_DIR") or ".") .. "/done.lua")
