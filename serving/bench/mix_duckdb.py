#!/usr/bin/env python3
"""The DuckDB peer of the dashboard-mix benchmark (serving/examples/bench_mix.rs).

Reads the query spec the benchmark wrote (queries.json): for each query, the
snapshot files and bucket spans of each roll-up level Tally's plan reads, the
output granularity, the grouping, the filters and the measures. Answers each
with one DuckDB query over those Parquet files: the points per (bucket,
group), the totals per group and the grand total (GROUPING SETS), as Tally's
answer holds them. DuckDB cannot union Redis HyperLogLog sketches, so a
distinct measure is read as count(column): less work than Tally does, which
favours the peer.

Prints one warm-up pass, then `rounds` timed passes, one query at a time:
    [mix] duckdb round N, 1 connection: Q queries, p50 X ms, p90 X ms, p99 X ms, max X ms, X queries/s
"""
import json
import sys
import time

import duckdb


def q(name):
    return '"' + name.replace('"', '""') + '"'


def lit(v):
    return "'" + str(v).replace("'", "''") + "'"


def sql(root, spec):
    g = int(spec["g"])
    parts = []
    for level in spec["levels"]:
        files = ", ".join(lit(f"{root}/{f}") for f in level["files"])
        spans = " OR ".join(f"(bucket_ms >= {a} AND bucket_ms < {b})" for a, b in level["spans"])
        parts.append(f"SELECT * FROM read_parquet([{files}], union_by_name = true) WHERE {spans}")
    if not parts:
        return None
    rows = " UNION ALL BY NAME ".join(parts)
    where = " AND ".join(
        f"{q(d)} IN ({', '.join(lit(v) for v in vs)})" for d, vs in spec["filters"].items()
    ) or "TRUE"
    dims = [q(d) for d in spec["group_by"]]
    aggs = []
    for m in spec["measures"]:
        cols = [q(c) for c in m["columns"]]
        agg = m["agg"]
        if agg == "count":
            aggs.append(f"sum({cols[0]})")
        elif agg == "sum":
            aggs.append(f"sum({cols[0]}) + sum({cols[1]})")
        elif agg in ("min", "max"):
            aggs.append(f"{agg}({cols[0]})")
        else:
            aggs.append(f"count({cols[0]})")
    t = f"(bucket_ms // {g}) * {g}"
    keys = ", ".join([t] + dims)
    sets = f"({keys}), ({', '.join(dims)}), ()"
    return (
        f"SELECT {keys}, {', '.join(aggs)} FROM ({rows}) WHERE {where} "
        f"GROUP BY GROUPING SETS ({sets})"
    )


def main():
    spec = json.load(open(sys.argv[1]))
    root = spec["root"]
    con = duckdb.connect()
    texts = [sql(root, s) for s in spec["queries"]]

    def run_pass():
        ms = []
        started = time.perf_counter()
        for text in texts:
            t = time.perf_counter()
            if text is not None:
                con.execute(text).fetchall()
            ms.append((time.perf_counter() - t) * 1000.0)
        return ms, time.perf_counter() - started

    run_pass()  # warm-up
    for r in range(int(spec["rounds"])):
        ms, wall = run_pass()
        ms.sort()
        pct = lambda p: ms[round((len(ms) - 1) * p)]
        print(
            f"[mix] duckdb {duckdb.__version__} round {r + 1}, 1 connection: {len(ms)} queries, "
            f"p50 {pct(0.5):.2f} ms, p90 {pct(0.9):.2f} ms, p99 {pct(0.99):.2f} ms, "
            f"max {ms[-1]:.2f} ms, {len(ms) / wall:.0f} queries/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
