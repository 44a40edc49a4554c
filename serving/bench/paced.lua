-- Paced requests for wrk: each connection waits an exponentially
-- distributed time (mean connections / rate) before each request, so the
-- connections together send about BENCH_RATE requests per second as a
-- Poisson stream, instead of each sending its next request the moment the
-- last one is answered (a closed loop at saturation, where latency is
-- connections / throughput by Little's law).
local rate = tonumber(os.getenv("BENCH_RATE") or "2000")
local conns = tonumber(os.getenv("BENCH_CONNECTIONS") or "64")
local mean_ms = conns * 1000 / rate

-- One seed per thread: each thread has its own Lua state, which `setup`
-- (run in the main state, once per thread) gives its number.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("seed", os.time() * 1000 + threads)
end

function init(args)
  math.randomseed(seed)
end

function delay()
  return -mean_ms * math.log(1 - math.random())
end
