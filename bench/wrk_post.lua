-- wrk script: POST the JSON body in $BENCH_BODY_FILE, print one JSON line of results.
-- Latencies are microseconds (wrk's unit); percentiles include p99.9.
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body

-- BENCH_NEW_POLICY=1: every request carries a policy the router has not seen, as from a backend
-- that builds one per request: the benchmark body's threshold "bench_intelligence ge 0.3" becomes
-- 0.3 + n * 1e-9 for the n-th request (the same routes pass; the policy's identity differs).
if os.getenv("BENCH_NEW_POLICY") == "1" then
  local pre, post = body:match('^(.-)%["cmp","bench_intelligence","ge",0%.3%](.*)$')
  assert(pre, "BENCH_NEW_POLICY: the body has no bench_intelligence threshold of 0.3")
  local n = 0
  function request()
    n = n + 1
    return wrk.format(nil, nil, nil,
      pre .. string.format('["cmp","bench_intelligence","ge",%.12f]', 0.3 + n * 1e-9) .. post)
  end
end
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_AUTH") or "sk-bench")

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local non2xx = 0
function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

-- response() runs in each thread; collect its counter through the thread table
function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non2xx") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.2f,"stdev":%.2f,"max":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p99.9":%d,"p99.99":%d}}\n',
    summary.requests, summary.duration, summary.bytes, bad,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency:percentile(99.99)))
end
