-- Shared wrk done() hook: summary and latency percentiles (microseconds) as JSON to WRK_JSON.
local percentiles = { 50, 75, 90, 95, 99, 99.9, 99.99 }

function done(summary, latency, requests)
  local path = os.getenv("WRK_JSON")
  if not path then return end
  local f = assert(io.open(path, "w"))
  local e = summary.errors
  f:write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"mean_us":%.1f,"max_us":%d,"percentiles":[',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency.max))
  for i, p in ipairs(percentiles) do
    if i > 1 then f:write(",") end
    f:write(string.format("[%g,%d]", p, latency:percentile(p)))
  end
  f:write("]}\n")
  f:close()
end
