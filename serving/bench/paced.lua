-- Paced requests for wrk: each connection waits an exponentially
-- distributed time (mean connections / rate) before each request, so the
-- connections together send about BENCH_RATE requests per second as a
-- Poisson stream, instead of each sending its next request the moment the
-- last one is answered (a closed loop at saturation, where latency is
-- connections / throughput by Little's law).
local rate = tonumber(os.getenv("BENCH_RATE") or "2000")
local conns = tonumber(os.getenv("BENCH_CONNECTIONS") or "64")
local mean_ms = conns * 1000 / rate

function init(args)
  -- One seed per thread (each has its own Lua state).
  math.randomseed(os.time() + tonumber(string.sub(tostring({}), 8), 16))
end

function delay()
  return -mean_ms * math.log(1 - math.random())
end
