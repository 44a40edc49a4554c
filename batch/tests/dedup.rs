//! `dedup = "event_id"` in the batch: producer retries (the same event at
//! another offset, maybe another partition and a later file or run) are
//! counted once per event-time day, as the truth's plain fold says.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use object_store::ObjectStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_batch::{run_batch, RunOptions};
use tally_core::config::Config;
use tally_testkit::config::{TestConfig, DEDUP_VIEW, STANDARD_VIEWS, TOPIC};
use tally_testkit::gen::Shape;
use tally_testkit::truth::Truth;

/// The standard views and `once` (dedup), on `store_url`.
fn dedup_config(store_url: &str) -> Config {
    TestConfig::new()
        .store(store_url)
        .extra("[batch]\ngc_grace = \"0ms\"")
        .views(&format!("{STANDARD_VIEWS}{DEDUP_VIEW}"))
        .build()
}

/// `n` records with 10 % retries of the last 500 events, over `partitions`
/// partitions, Kafka times in `[ts_from, ts_from + span)` (not in order, so
/// a retry may carry an earlier Kafka time than its first copy).
fn generate_with_retries(
    seed: u64,
    n: usize,
    partitions: i32,
    next_offsets: &mut Vec<i64>,
    ts_from: i64,
    span: i64,
) -> Vec<Gen> {
    let s = Shape {
        retry_share: 0.1,
        retry_span: 500,
        ..shape()
    };
    generate_shaped(s, seed, n, partitions, next_offsets, ts_from, span)
}

/// The truth of every view over the records of epochs below `cut`, each
/// record at its coordinates (de-duplicated by them first).
fn truth_at(cfg: &Config, events: &[Gen], cut: i64) -> Truth {
    let mut seen = HashSet::new();
    let mut truth = Truth::new(cfg);
    for g in events {
        if g.epoch() < cut && seen.insert((g.partition, g.offset)) {
            truth.add_at(TOPIC, g.partition, g.offset, g.json(), g.kafka_ts());
        }
    }
    truth
}

async fn check_views(store: &Arc<dyn ObjectStore>, cfg: &Config, events: &[Gen], cut: i64) {
    let truth = truth_at(cfg, events, cut);
    // The data holds duplicates the dedup view must remove.
    let total = |v: &str, m: &str| -> u64 {
        let t = truth.view(v);
        t.cells.map.values().map(|c| c[t.measure(m)].count).sum()
    };
    assert!(
        total("once", "events") + 50 < total("daily", "events"),
        "retries in the data"
    );
    for v in VIEWS.iter().chain(&["once"]) {
        check_with(store, cfg, v, &truth).await;
    }
}

/// Retries within a run, across files and partitions, and retries that land
/// in a later (incremental) run whose first copy is in an older file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_count_once_per_day_in_full_and_incremental_runs() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "memory://".to_owned(),
        format!("file://{}", dir.path().display()),
    ] {
        let cfg = dedup_config(&url);
        let store = tally_store::open(&cfg.store).unwrap();
        let epoch0 = T0 / HOUR;
        let mut offsets = Vec::new();
        let mut events = generate_with_retries(1, 8_000, 3, &mut offsets, T0, 6 * HOUR);
        write_archive(&store, "events", &events).await;
        set_cut(&store, epoch0 + 4).await;
        let s1 = run_batch(&cfg, store.clone(), RunOptions::default())
            .await
            .unwrap();
        assert!(s1.views.iter().all(|v| v.full), "{s1:?}");
        check_views(&store, &cfg, &events, epoch0 + 4).await;

        // Later: new events with their own retries, and retries of events
        // the first run counted, sent again hours later to any partition
        // (new files of new epochs; their days are recomputed from every
        // file touching them).
        let mut newer = generate_with_retries(2, 3_000, 3, &mut offsets, T0 + 6 * HOUR, 2 * HOUR);
        let mut rng = StdRng::seed_from_u64(3);
        let late_retries: Vec<Gen> = events
            .iter()
            .filter(|g| g.epoch() < epoch0 + 4 && g.g.valid)
            .step_by(20)
            .map(|g| {
                let p = rng.gen_range(0..3);
                let offset = offsets[p as usize];
                offsets[p as usize] += 1;
                let mut copy = g.g.clone();
                copy.kafka_ts_ms = T0 + 6 * HOUR + rng.gen_range(0..2 * HOUR);
                Gen {
                    partition: p,
                    offset,
                    g: copy,
                }
            })
            .filter(|g| tally_testkit::truth::accepts(g.json(), g.kafka_ts(), &cfg.events.limits()))
            .collect();
        assert!(late_retries.len() > 100);
        newer.extend(late_retries);
        write_archive(&store, "events", &newer).await;
        events.extend(newer);
        set_cut(&store, epoch0 + 8).await;
        let s2 = run_batch(&cfg, store.clone(), RunOptions::default())
            .await
            .unwrap();
        assert!(s2.views.iter().all(|v| !v.full), "{s2:?}");
        check_views(&store, &cfg, &events, epoch0 + 8).await;

        // A full run gives the same snapshot.
        let incremental = snapshot(&store, &cfg, "once").await;
        let full = RunOptions {
            full: true,
            ..Default::default()
        };
        run_batch(&cfg, store.clone(), full).await.unwrap();
        assert_eq!(snapshot(&store, &cfg, "once").await, incremental, "{url}");
    }
}

/// A retry that differs from its first copy (another page): the copy
/// counted is the first by (Kafka timestamp, topic, partition, offset),
/// whatever file or offset order says; each event-time day counts the id
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_copy_by_kafka_time_is_the_one_counted() {
    let cfg = dedup_config("memory://");
    let store = tally_store::open(&cfg.store).unwrap();
    let epoch0 = T0 / HOUR;
    let ev = |page: &str, time: i64| {
        format!(
            r#"{{"event_id":"r1","event_type":"click","timestamp":{time},"user_id":"u1","properties":{{"page":"{page}","duration":5}}}}"#
        )
    };
    let day2 = T0 + 86_400_000;
    let events = vec![
        // Partition 0 holds the later copy at the lower offset.
        record(0, 0, T0 + 2 * HOUR, ev("/late", T0 + 1000)),
        // Partition 1 holds the earlier one (another file).
        record(1, 0, T0 + HOUR, ev("/early", T0 + 1000)),
        // A third copy, ties on Kafka time with the first: offset decides.
        record(1, 1, T0 + HOUR, ev("/tie", T0 + 1000)),
        // The same id on another event-time day counts again.
        record(0, 1, day2 + HOUR, ev("/other-day", day2 + 5)),
    ];
    write_archive(&store, "events", &events).await;
    set_cut(&store, epoch0 + 30).await;
    run_batch(&cfg, store.clone(), RunOptions::default())
        .await
        .unwrap();
    let truth = truth_at(&cfg, &events, epoch0 + 30);
    let once = truth.view("once");
    let pages: Vec<_> = once.cells.map.keys().map(|(_, g)| g[0].clone()).collect();
    assert_eq!(
        pages,
        [Some("/early".to_owned()), Some("/other-day".to_owned())],
        "the truth's own rule"
    );
    check_with(&store, &cfg, "once", &truth).await;
    check_with(&store, &cfg, "page_views", &truth).await;
}
