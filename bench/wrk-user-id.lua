-- wrk script for `make bench`: every request carries a random x-user-id from a large range (so
-- a sticky split sees a new user on almost every request), and the run ends with one
-- machine-readable BENCH line that bench/run.sh parses (times in microseconds).
math.randomseed(os.time())

request = function()
  return wrk.format(nil, nil, { ["x-user-id"] = tostring(math.random(1, 1000000000)) })
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "errors_connect=%d errors_read=%d errors_write=%d errors_status=%d errors_timeout=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
