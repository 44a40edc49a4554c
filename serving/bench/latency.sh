#!/usr/bin/env bash
# Serving latency benchmark (issues 5 and 13; not a test): a 24-hour query
# grouped by page over a day of 1-minute buckets in both layers
# (serving/examples/bench_server.rs: 21,600 snapshot cells at 1m, with their
# 1h and 1d roll-ups, + 21,600 Redis cells), hammered by wrk with 64
# connections. Prints p50/p99 latency and queries/s per round and their
# medians, with the answer cache off (the default: every request merges
# afresh) and, with BENCH_CACHE=1, also on (TTL 250 ms).
#
#   bash serving/bench/latency.sh            # BENCH_ROUNDS=3 BENCH_SECONDS=15 BENCH_THREADS=2
#
# BENCH_QUERY picks the query variant (issue 18): `plain` (the default:
# the five measures the benchmark has always asked), `window` (the same with
# window=3h: each hourly point merges three hours), `lookup` (grouped by
# properties.page@section, a CSV table), `count` (the count alone) and `p99`
# (the quantiles measure alone, quantiles=0.99: the target is at most 2x
# `count`), or `all` (every variant in turn, for side-by-side figures).
#
# BENCH_REDIS picks the speed side's Redis (issue 16): `single` (the
# default), `cluster` (a private 3-master Redis Cluster, 16 partition
# groups), or `both` (in turn, for the ratio).
#
# BENCH_RATE paces the load (issue 13's target: p99 at most 10 ms with at
# least 2,000 queries/s from 64 connections): each connection waits an
# exponentially distributed time before each request (serving/bench/
# paced.lua), so the connections together offer about BENCH_RATE queries/s
# as a Poisson stream. Without it every connection sends its next request
# the moment the last is answered: a closed loop at saturation, which
# measures the most queries/s, and where the mean latency is connections /
# throughput (Little's law) whatever the server does.
#
# wrk and the server share this machine's cores: the figures include that.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export TALLY_CACHE="${TALLY_CACHE:-$HOME/.cache/tally}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TALLY_CACHE/target}"
ROUNDS="${BENCH_ROUNDS:-3}"
SECONDS_PER_ROUND="${BENCH_SECONDS:-15}"
THREADS="${BENCH_THREADS:-2}"
CONNS="${BENCH_CONNECTIONS:-64}"
PORT="${BENCH_PORT:-18098}"
PACE=()
LOAD="closed loop"
if [ -n "${BENCH_RATE:-}" ]; then
  PACE=(-s "$ROOT/serving/bench/paced.lua")
  LOAD="paced at $BENCH_RATE queries/s"
  export BENCH_RATE BENCH_CONNECTIONS="$CONNS"
fi

if ! command -v wrk >/dev/null; then
  echo "[bench] apt-get install wrk" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq wrk >/dev/null; else sudo apt-get install -y -qq wrk >/dev/null; fi
fi
cd "$ROOT"
# --workspace: the same feature set as every other build, so the shared
# target directory's release dependencies are reused, not rebuilt.
cargo build --release --workspace --example bench_server
BIN="$CARGO_TARGET_DIR/release/examples/bench_server"
BASE="http://127.0.0.1:$PORT/api/v1/views/pv/query?from=1704067200000&to=1704153600000&granularity=1h"
# The measures the plain variants ask (the view also has `lat`, quantiles).
FIVE="views,dur,longest,shortest,users"
url_of() {
  case "$1" in
    plain) echo "$BASE&group_by=properties.page&measures=$FIVE" ;;
    window) echo "$BASE&group_by=properties.page&measures=$FIVE&window=3h" ;;
    lookup) echo "$BASE&group_by=properties.page%40section&measures=$FIVE" ;;
    count) echo "$BASE&group_by=properties.page&measures=views" ;;
    p99) echo "$BASE&group_by=properties.page&measures=lat&quantiles=0.99" ;;
    *) echo "BENCH_QUERY must be plain, window, lookup, count, p99 or all" >&2; exit 2 ;;
  esac
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# wrk prints latencies as 850.00us / 1.23ms / 1.01s: to milliseconds.
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f\n", v}'; }

run_mode() {
  local label=$1 ttl=$2 URL=$3 log server p50s="" p99s="" rpss=""
  log=$(mktemp)
  TALLY_BENCH_REDIS=$REDIS_MODE TALLY_BENCH_RESULT_TTL_MS=$ttl "$BIN" "127.0.0.1:$PORT" >"$log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 1 900); do grep -q '^ready' "$log" && break; sleep 0.1; done
  grep -q '^ready' "$log" || { cat "$log"; echo "bench_server did not start" >&2; exit 1; }
  for _ in $(seq 1 100); do curl -fs -o /dev/null "$URL" && break; sleep 0.1; done
  curl -fs "$URL" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("[bench] answer: %d groups, %d points, views total %s, degraded %s, %d speed slices" % (len(r["series"]), sum(len(s["points"]) for s in r["series"]), r["totals"].get("views"), r["degraded"], r["freshness"]["speed_slices"]))'
  wrk -t"$THREADS" -c"$CONNS" -d3s "$URL" >/dev/null   # warm-up
  for i in $(seq 1 "$ROUNDS"); do
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"${SECONDS_PER_ROUND}s" --latency "${PACE[@]}" "$URL")
    p50=$(echo "$out" | awk '$1=="50%"{print $2}' | to_ms)
    p99=$(echo "$out" | awk '$1=="99%"{print $2}' | to_ms)
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/' | tr '\n' ' ')
    echo "[bench] $label round $i: p50 ${p50} ms, p99 ${p99} ms, ${rps} queries/s ${errs}"
    p50s+="$p50"$'\n'; p99s+="$p99"$'\n'; rpss+="$rps"$'\n'
  done
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  trap - EXIT
  rm -f "$log"
  echo "[bench] $label median of $ROUNDS: p50 $(printf '%s' "$p50s" | median) ms, p99 $(printf '%s' "$p99s" | median) ms, $(printf '%s' "$rpss" | median) queries/s"
}

echo "[bench] $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); wrk -t$THREADS -c$CONNS -d${SECONDS_PER_ROUND}s, $ROUNDS rounds, $LOAD"
VARIANTS="${BENCH_QUERY:-plain}"
[ "$VARIANTS" = all ] && VARIANTS="plain window lookup count p99"
MODES="${BENCH_REDIS:-single}"
[ "$MODES" = both ] && MODES="single cluster"
for REDIS_MODE in $MODES; do
  for v in $VARIANTS; do
    URL=$(url_of "$v")
    echo "[bench] query ($v, redis $REDIS_MODE): $URL"
    run_mode "$v, redis $REDIS_MODE, $LOAD, cache off (merge per request)" 0 "$URL"
    if [ "${BENCH_CACHE:-0}" = 1 ]; then run_mode "$v, redis $REDIS_MODE, cache on (ttl 250 ms)" 250 "$URL"; fi
  done
done
