"""The peer of benches/batch_recompute.rs: DuckDB computing the benchmark view
(minute x event_type x page: count, sum, max, approximate distinct users)
over the same Parquet archive files, writing its result as Parquet as the
batch writes its snapshot.

Usage: python3 batch_recompute_duckdb.py DATASET_DIR (dedup|nodedup)

`dedup` de-duplicates on (topic, partition, offset) first, as the batch does;
`nodedup` skips that (DuckDB's lower bound). Prints `groups=N` last. The
minute bucket is integer arithmetic on the epoch-ms event time, which is what
the batch stores (date_trunc on a timestamp gives the same groups). Hive
partitioning is off: the archive's `epoch=` folder names would otherwise add
(and override) columns.
"""

import os
import sys
import tempfile

try:
    import duckdb
except ImportError:
    sys.exit("duckdb is missing: run infra/install (or: python3 -m pip install duckdb==2.0.0)")


def main():
    dataset, mode = sys.argv[1], sys.argv[2]
    files = os.path.join(dataset, "events", "*", "*", "*", "*.parquet")
    con = duckdb.connect()
    extract = f"""
        SELECT topic, "partition", "offset", time_ms, event_type, user_id,
               list_filter(props, lambda kv: kv.key = 'page')[1].str AS page,
               list_filter(props, lambda kv: kv.key = 'duration')[1]."int" AS duration
        FROM read_parquet('{files}', hive_partitioning = false)
        WHERE reject IS NULL
    """
    if mode == "dedup":
        events = f"""
            SELECT any_value(time_ms) AS time_ms, any_value(event_type) AS event_type,
                   any_value(user_id) AS user_id, any_value(page) AS page,
                   any_value(duration) AS duration
            FROM ({extract}) GROUP BY topic, "partition", "offset"
        """
    else:
        events = extract
    query = f"""
        SELECT time_ms // 60000 * 60000 AS bucket, event_type, page,
               count(*) AS events, sum(duration) AS duration, max(duration) AS longest,
               approx_count_distinct(user_id) AS users
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
