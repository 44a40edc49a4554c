#!/usr/bin/env bash
# The dashboard-mix benchmark (issue 13; not a test): distinct queries over
# 90 days of history in three views with a live speed layer under load,
# answered by `tally serve` (answer cache off) and by DuckDB over the same
# snapshot files. See serving/examples/bench_mix/.
#
#   bash serving/bench/mix.sh    # BENCH_QUERIES=300 BENCH_ROUNDS=3 BENCH_RATE=20000 BENCH_CONNS=4 BENCH_DAYS=90
#   BENCH_REDIS=cluster bash serving/bench/mix.sh    # the speed side in a 3-master Redis Cluster
#
# The history is written once into BENCH_DIR (default
# $CARGO_TARGET_DIR/bench-mix) and reused. Everything shares this machine's
# cores: the broker, Redis, `tally speed`, `tally serve`, the load generator,
# the benchmark client and DuckDB.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export TALLY_CACHE="${TALLY_CACHE:-$HOME/.cache/tally}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TALLY_CACHE/target}"
export BENCH_DIR="${BENCH_DIR:-$CARGO_TARGET_DIR/bench-mix}"
cd "$ROOT"
# --workspace: the same feature set as every other build (see latency.sh).
cargo build --release --workspace --bin tally --example bench_mix
export TALLY_BIN="$CARGO_TARGET_DIR/release/tally"
export BENCH_DUCKDB_SCRIPT="$ROOT/serving/bench/mix_duckdb.py"
echo "[mix] $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$CARGO_TARGET_DIR/release/examples/bench_mix"
