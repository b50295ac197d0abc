-- wrk script for scenario (d): POST /v1/messages with a tenant API key.
-- The runner passes the key and the JSON body in BENCH_KEY and BENCH_BODY, and
-- reads the one BENCH_JSON line that done() prints.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"non_2xx_3xx":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"latency_p50_ms":%.2f,' ..
    '"latency_p90_ms":%.2f,"latency_p99_ms":%.2f,"latency_max_ms":%.2f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
