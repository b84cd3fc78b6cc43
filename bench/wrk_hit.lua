-- wrk script for bench/run.py: sends the token header (from BENCH_TOKEN) and,
-- when the run is done, prints one line starting "BENCH_JSON " with the
-- request count, duration, errors and latency percentiles (microseconds),
-- including p99.9, which wrk's --latency summary does not show.
--
--   BENCH_TOKEN=t wrk -t1 -c16 -d10s --latency -s bench/wrk_hit.lua URL

wrk.method = "GET"
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["X-Aws-Parameters-Secrets-Token"] = token
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, " ..
    "\"errors\": {\"connect\": %d, \"read\": %d, \"write\": %d, " ..
    "\"status\": %d, \"timeout\": %d}, " ..
    "\"latency_us\": {\"p50\": %d, \"p90\": %d, \"p99\": %d, \"p99.9\": %d, " ..
    "\"max\": %d, \"mean\": %.1f}}\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
