-- The wrk script of `cargo xtask bench`: demo-like cookies ("c1=1; c2=2; JSESSIONID=<32 chars>"),
-- unique per request or drawn from a fixed pool, on a new connection per request, keep-alive, or
-- a few requests per connection.
--
-- Arguments (after the URL): PREFIX THREADS POOL close|keep|N [PATH]
--   PREFIX   8 characters that start every JSESSIONID of this run
--   THREADS  wrk's -t, so that threads draw disjoint cookies
--   POOL     0: every request has a new cookie; N: cookies cycle through N values (all threads
--            together cover the N values, so a table fills to exactly N)
--   close    "Connection: close": wrk opens a new connection for every request
--   N        every Nth request of a thread says "Connection: close": connections carry N
--            requests on average (a script cannot tell wrk's connections apart)
-- `done` prints one BENCH-RESULT line that lb-bench parses.

local next_thread = 0

function setup(thread)
  thread:set("thread_index", next_thread)
  next_thread = next_thread + 1
end

local function build(k, closing)
  local headers = { ["Cookie"] = string.format("c1=1; c2=2; JSESSIONID=%s%024d", prefix, k) }
  if closing then
    headers["Connection"] = "close"
  end
  return wrk.format("GET", path, headers)
end

function init(args)
  prefix = args[1]
  threads = tonumber(args[2])
  pool = tonumber(args[3])
  close = args[4] == "close"
  every = tonumber(args[4])
  path = args[5] or "/"
  sent = 0
  -- Small pools are formatted once, with and without the close when some requests close:
  -- the load generator should spend its time on the network.
  if pool > 0 and pool <= 10000 then
    cached = {}
    closing = {}
    for k = 0, pool - 1 do
      cached[k] = build(k, close)
      if every then
        closing[k] = build(k, true)
      end
    end
  end
end

function request()
  local k = sent * threads + thread_index
  local last = every and sent % every == every - 1
  sent = sent + 1
  if pool > 0 then
    k = k % pool
  end
  if cached then
    if last then
      return closing[k]
    end
    return cached[k]
  end
  return build(k, close or last)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH-RESULT requests=%d duration_us=%d bytes=%d errors=%d status_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.bytes, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99)))
end
