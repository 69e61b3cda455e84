-- The wrk script of `cargo xtask bench`: demo-like cookies ("c1=1; c2=2; JSESSIONID=<32 chars>"),
-- unique per request or drawn from a fixed pool, on a new connection per request or keep-alive.
--
-- Arguments (after the URL): PREFIX THREADS POOL close|keep [PATH]
--   PREFIX   8 characters that start every JSESSIONID of this run
--   THREADS  wrk's -t, so that threads draw disjoint cookies
--   POOL     0: every request has a new cookie; N: cookies cycle through N values (all threads
--            together cover the N values, so a table fills to exactly N)
--   close    "Connection: close": wrk opens a new connection for every request
-- `done` prints one BENCH-RESULT line that lb-bench parses.

local next_thread = 0

function setup(thread)
  thread:set("thread_index", next_thread)
  next_thread = next_thread + 1
end

local function build(k)
  local headers = { ["Cookie"] = string.format("c1=1; c2=2; JSESSIONID=%s%024d", prefix, k) }
  if close then
    headers["Connection"] = "close"
  end
  return wrk.format("GET", path, headers)
end

function init(args)
  prefix = args[1]
  threads = tonumber(args[2])
  pool = tonumber(args[3])
  close = args[4] == "close"
  path = args[5] or "/"
  sent = 0
  -- Small pools are formatted once: the load generator should spend its time on the network.
  if pool > 0 and pool <= 10000 then
    cached = {}
    for k = 0, pool - 1 do
      cached[k] = build(k)
    end
  end
end

function request()
  local k = sent * threads + thread_index
  sent = sent + 1
  if pool > 0 then
    k = k % pool
  end
  if cached then
    return cached[k]
  end
  return build(k)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH-RESULT requests=%d duration_us=%d bytes=%d errors=%d status_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.bytes, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99)))
end
