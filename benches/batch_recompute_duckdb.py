"""The peer of benches/batch_recompute.rs: DuckDB computing the benchmark view
(minute x event_type x page: count, sum, max, approximate distinct users)
over the same Parquet archive files (format v2: the properties are plain
columns), writing its result as Parquet as the batch writes its snapshot.

Usage: python3 batch_recompute_duckdb.py DATASET_DIR (dedup|rowdedup)

`dedup` de-duplicates as the batch does: the files' (topic, partition,
offset) ranges are read from their Parquet statistics, and only files whose
ranges overlap are de-duplicated row by row (GROUP BY the coordinates); the
others are read as they are. `rowdedup` de-duplicates every row on the
coordinates (what the batch did before archive files were known to be runs).
Prints `groups=N` last. The minute bucket is integer arithmetic on the
epoch-ms event time, which is what the batch stores. Hive partitioning is
off: the archive's `epoch=` folder names would otherwise add (and override)
columns.
"""

import os
import sys
import tempfile

try:
    import duckdb
except ImportError:
    sys.exit("duckdb is missing: run infra/install (or: python3 -m pip install duckdb==2.0.0)")


def sql_list(files):
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def overlapping(con, files):
    """The files whose coordinate ranges overlap another file's."""
    stats = con.execute(
        f"""
        SELECT file_name, path_in_schema, min(stats_min_value), max(stats_max_value)
        FROM parquet_metadata({sql_list(files)})
        WHERE path_in_schema IN ('topic', 'partition', 'offset')
        GROUP BY ALL
        """
    ).fetchall()
    span = {}
    for name, column, lo, hi in stats:
        span.setdefault(name, {})[column] = (lo, hi)
    ranges = []
    for name, s in span.items():
        t, p, o = s.get("topic"), s.get("partition"), s.get("offset")
        if not (t and p and o) or t[0] != t[1]:
            ranges.append((name, None))
        else:
            ranges.append((name, (t[0], int(p[0]), int(p[1]), int(o[0]), int(o[1]))))
    out = set()
    for i, (a, ra) in enumerate(ranges):
        for b, rb in ranges[i + 1:]:
            if ra is None or rb is None or (
                ra[0] == rb[0] and ra[1] <= rb[2] and rb[1] <= ra[2] and ra[3] <= rb[4] and rb[3] <= ra[4]
            ):
                out.update([a, b])
    return out


def main():
    dataset, mode = sys.argv[1], sys.argv[2]
    pattern = os.path.join(dataset, "events", "*", "*", "*", "*.parquet")
    con = duckdb.connect()
    files = [r[0] for r in con.execute(f"SELECT file FROM glob('{pattern}')").fetchall()]

    def extract(fs):
        return f"""
            SELECT topic, "partition", "offset", time_ms, event_type, user_id,
                   "properties.page" AS page, "properties.duration" AS duration
            FROM read_parquet({sql_list(fs)}, hive_partitioning = false, union_by_name = true)
            WHERE reject IS NULL
        """

    def dedup(fs):
        return f"""
            SELECT any_value(time_ms) AS time_ms, any_value(event_type) AS event_type,
                   any_value(user_id) AS user_id, any_value(page) AS page,
                   any_value(duration) AS duration
            FROM ({extract(fs)}) GROUP BY topic, "partition", "offset"
        """

    def plain(fs):
        return f"SELECT time_ms, event_type, user_id, page, duration FROM ({extract(fs)})"

    if mode == "rowdedup":
        events = dedup(files)
    else:
        shared = overlapping(con, files)
        alone = [f for f in files if f not in shared]
        parts = ([plain(alone)] if alone else []) + ([dedup(sorted(shared))] if shared else [])
        events = " UNION ALL ".join(parts)
    latency = (
        ",\n               approx_quantile(duration, [0.5, 0.9, 0.99]) AS latency"
        if os.environ.get("BENCH_QUANTILES") == "1"
        else ""
    )
    query = f"""
        SELECT time_ms // 60000 * 60000 AS bucket, event_type, page,
               count(*) AS events, sum(duration) AS duration, max(duration) AS longest,
               approx_count_distinct(user_id) AS users{latency}
        FROM ({events})
        GROUP BY ALL
    """
    with tempfile.TemporaryDirectory() as out:
        path = os.path.join(out, "view.parquet")
        con.execute(f"COPY ({query}) TO '{path}' (FORMAT parquet, COMPRESSION snappy)")
        groups = con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0]
    print(f"groups={groups}")


if __name__ == "__main__":
    main()
