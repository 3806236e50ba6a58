-- wrk script for soak/soak.py: a random x-user-id per request (so the sticky 'everyone' rule
-- spreads users over canary and stable), paced by SOAK_DELAY_MS (may be fractional) per connection (0: as fast as
-- the machine goes), and one machine-readable SOAK line at the end.
math.randomseed(os.time())
local delay_ms = tonumber(os.getenv("SOAK_DELAY_MS") or "0")

request = function()
  return wrk.format(nil, "/soak", { ["x-user-id"] = tostring(math.random(1, 1000000000)) })
end

-- wrk takes whole milliseconds: a fractional think time is dithered between its two neighbours.
if delay_ms > 0 then
  local whole = math.floor(delay_ms)
  local frac = delay_ms - whole
  delay = function()
    if math.random() < frac then
      return whole + 1
    end
    return whole
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "SOAK requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d " ..
    "errors_connect=%d errors_read=%d errors_write=%d errors_status=%d errors_timeout=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
