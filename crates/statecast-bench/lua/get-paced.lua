-- wrk script: get.lua's requests, each connection pausing between its requests so that all of
-- them together send about BENCH_RATE requests/s (wrk has no rate option). The pause is the
-- mean gap BENCH_GAP_US (microseconds, set by statecast-bench from the rate, the connection
-- count and a calibration run's latency), drawn as a whole number of milliseconds, the unit
-- of wrk's delay(), so that the mean is right. wrk times a request from its write, so the
-- latencies exclude the pause.
dofile((os.getenv("BENCH_LUA_DIR") or ".") .. "/get.lua")

local gap_ms = tonumber(os.getenv("BENCH_GAP_US") or "1000") / 1000

function delay()
  local whole = math.floor(gap_ms)
  if math.random() < gap_ms - whole then
    return whole + 1
  end
  return whole
end
