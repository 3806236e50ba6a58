-- wrk script for soak/soak.py: a random x-user-id per request (so the sticky 'everyone' rule
-- spreads users over canary and stable), and one machine-readable SOAK line at the end.
-- Pacing (one wrk thread): SOAK_RATE requests per second over SOAK_CONNECTIONS connections, by
-- a think time between a response and the connection's next request. It starts at
-- SOAK_DELAY_MS and is corrected once a second towards the rate (os.time() ticks in seconds),
-- so the pace holds when the machine's other work changes the latency. wrk takes whole
-- milliseconds: a fractional think time is dithered between its two neighbours.
-- SOAK_RATE 0: no pacing, as fast as the machine goes.
math.randomseed(os.time())
local rate = tonumber(os.getenv("SOAK_RATE") or "0")
local conns = tonumber(os.getenv("SOAK_CONNECTIONS") or "1")
-- A global: done() (in wrk's main Lua state) reads the thread's last value through thread:get.
delay_ms = tonumber(os.getenv("SOAK_DELAY_MS") or "0")
local threads = {}

setup = function(thread)
  table.insert(threads, thread)
end

request = function()
  return wrk.format(nil, "/soak", { ["x-user-id"] = tostring(math.random(1, 1000000000)) })
end

if rate > 0 then
  local second, count, whole_second = nil, 0, false
  delay = function()
    count = count + 1
    local now = os.time()
    if second == nil or now - second > 1 or (now ~= second and not whole_second) then
      -- the start, a stall, or the end of the first (partial) second: measure from here
      second, count, whole_second = now, 0, second ~= nil and now - second == 1
    elseif now ~= second then
      local seen = count
      -- cycle per connection = latency + think time = conns / rate: move the think time by
      -- most of the gap between the cycle wanted and the cycle seen (all of it overshoots).
      delay_ms = math.max(0, delay_ms + 800 * (conns / rate - conns / seen))
      second, count = now, 0
    end
    local whole = math.floor(delay_ms)
    if math.random() < delay_ms - whole then
      return whole + 1
    end
    return whole
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "SOAK requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d " ..
    "errors_connect=%d errors_read=%d errors_write=%d errors_status=%d errors_timeout=%d " ..
    "delay_us=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout,
    math.floor((threads[1] and threads[1]:get("delay_ms") or delay_ms) * 1000)))
end
