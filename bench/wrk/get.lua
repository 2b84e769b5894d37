-- Static GET with HTTP Basic auth (the same request bytes to bulkhead and to nginx).
-- Prints one RESULT line: rps, p50_us, p99_us (per request), requests, non2xx, errors and
-- bytes (per response), read by bench/suite/throughput.py.
wrk.method = "GET"
wrk.headers["Authorization"] = "Basic " .. os.getenv("BENCH_BASIC")
function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format("RESULT rps=%.2f p50_us=%.1f p99_us=%.1f requests=%d non2xx=%d errors=%d bytes=%.0f\n",
    summary.requests / secs, latency:percentile(50), latency:percentile(99), summary.requests,
    e.status, e.connect + e.read + e.write + e.timeout,
    summary.requests > 0 and summary.bytes / summary.requests or 0))
end
