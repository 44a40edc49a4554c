#!/usr/bin/env bash
# The serving memory benchmark (issue 13; not a test): peak RSS of
# `tally serve` with 30 days x 1M groups per day of snapshot in the store,
# while queries read every day. See serving/examples/bench_memory.rs.
#
#   bash serving/bench/memory.sh    # BENCH_DAYS=30 BENCH_PAGES=700
#
# The history (about 30M rows) is written once into BENCH_DIR (default
# $CARGO_TARGET_DIR/bench-memory) and reused.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export TALLY_CACHE="${TALLY_CACHE:-$HOME/.cache/tally}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TALLY_CACHE/target}"
export BENCH_DIR="${BENCH_DIR:-$CARGO_TARGET_DIR/bench-memory}"
cd "$ROOT"
cargo build --release --workspace --bin tally --example bench_memory
export TALLY_BIN="$CARGO_TARGET_DIR/release/tally"
echo "[memory] $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$CARGO_TARGET_DIR/release/examples/bench_memory"
