#!/usr/bin/env python3
"""Tally's capacity calculator: machines per role for a given event rate.

The constants are the per-event costs measured on this project's machine
(docs/CAPACITY.md, first table; BENCHMARKS.md has the runs). Usage:

    python3 infra/capacity.py --rate 1000000 [--views 2] [--headroom 0.5]
        [--queries 200] [--event-bytes 200]
"""
import argparse
import math

SPEED_CPU_S_PER_EVENT = 0.96e-6      # tally speed, 2 views
SPEED_EVENTS_PER_PROCESS = 1.40e6    # one consume thread, quiet machine
REDIS_CPU_S_PER_EVENT = 0.27e-6      # the apply script, 2 views
ARCHIVE_CPU_S_PER_EVENT = 3.39e-6    # tally archive, format v2
BATCH_CPU_S_PER_EVENT = 5.6 / 20e6   # Polars plan + 3 levels, one view
ARCHIVE_BYTES_PER_EVENT = 67.6       # for events of about 200 B of JSON
SERVE_DISTINCT_QUERIES_PER_CORE = 170
KAFKA_MB_S_PER_BROKER = 50           # an assumption, not measured here


def plan(rate, views, headroom, queries, event_bytes):
    view_factor = views / 2  # the speed figures are for 2 views
    speed_cores = rate * SPEED_CPU_S_PER_EVENT * view_factor
    per_process = SPEED_EVENTS_PER_PROCESS * headroom
    redis_cores = rate * REDIS_CPU_S_PER_EVENT * view_factor
    archive_cores = rate * ARCHIVE_CPU_S_PER_EVENT
    day = rate * 86_400
    batch_core_hours = day * BATCH_CPU_S_PER_EVENT * views / 3600
    mb_s = rate * ARCHIVE_BYTES_PER_EVENT * event_bytes / 200 / 1e6
    kafka_mb_s = rate * event_bytes / 1e6
    rows = [
        ("events per day", f"{day:,.0f}"),
        ("speed: cores busy", f"{speed_cores:.2f}"),
        ("speed: processes", f"{max(1, math.ceil(rate / per_process))}"),
        ("Redis: cores busy (one thread each)", f"{redis_cores:.2f}"),
        ("Redis: instances or cluster shards",
         f"{max(1, math.ceil(redis_cores / headroom))}"),
        ("archive: cores busy", f"{archive_cores:.2f}"),
        ("archive: cores planned", f"{math.ceil(archive_cores / headroom)}"),
        ("master dataset written, MB/s", f"{mb_s:.1f}"),
        ("master dataset per day, TB", f"{mb_s * 86_400 / 1e6:.2f}"),
        ("Kafka produce, MB/s", f"{kafka_mb_s:.1f}"),
        ("Kafka brokers (assumption: 50 MB/s each, RF 3)",
         f"{max(3, math.ceil(kafka_mb_s * 3 / KAFKA_MB_S_PER_BROKER))}"),
        ("nightly batch, core-hours (all views)", f"{batch_core_hours:.1f}"),
        ("serving: cores for the query rate",
         f"{max(1, math.ceil(queries / SERVE_DISTINCT_QUERIES_PER_CORE))}"),
    ]
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, required=True, help="events per second")
    p.add_argument("--views", type=int, default=2, help="views each event feeds")
    p.add_argument("--headroom", type=float, default=0.5,
                   help="share of a measured rate to plan at (catch-up needs the rest)")
    p.add_argument("--queries", type=float, default=200,
                   help="distinct dashboard queries per second")
    p.add_argument("--event-bytes", type=float, default=200, help="bytes of JSON per event")
    a = p.parse_args()
    if a.rate <= 0 or not 0 < a.headroom <= 1 or a.views < 1:
        p.error("--rate must be positive, --headroom in (0, 1], --views at least 1")
    rows = plan(a.rate, a.views, a.headroom, a.queries, a.event_bytes)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
