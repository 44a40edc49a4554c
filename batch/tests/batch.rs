//! Batch runs against the truth: a plain fold over the generated events.
//!
//! Each scenario runs on `memory://` and on `file://`.

mod common;

use std::sync::Arc;

use common::*;
use object_store::ObjectStore;
use tally_batch::lock::{self, Acquired};
use tally_batch::promote::Promote;
use tally_batch::{run_batch, run_locked, BatchError, RunOptions};
use tally_core::agg::Agg;
use tally_store::paths;

/// Full, then incremental with new files, stragglers and duplicates; the
/// incremental snapshot equals a full recompute and the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_runs_equal_the_truth_and_a_full_run() {
    for (cfg, _guard) in stores() {
        let url = cfg.store.url.clone();
        let store = tally_store::open(&cfg.store).unwrap();
        let epoch0 = T0 / HOUR;
        let mut offsets = Vec::new();
        // Epochs 0..6 of the test window.
        let mut events = generate(1, 30_000, 3, &mut offsets, T0, 6 * HOUR);
        write_archive(&store, "events", &events).await;
        // No cut yet: nothing to do.
        let s0 = run_batch(&cfg, store.clone(), RunOptions::default())
            .await
            .unwrap();
        assert_eq!(s0.cut, None);
        assert!(manifest(&store, "page_views").await.is_none());
        set_cut(&store, epoch0 + 4).await;
        let s1 = run_batch(&cfg, store.clone(), RunOptions::default())
            .await
            .unwrap();
        assert_eq!(s1.cut, Some(epoch0 + 4));
        assert!(s1.views.iter().all(|v| v.full));
        check_all(&store, &cfg, &events, epoch0 + 4).await;

        // More records: new epochs, stragglers in old epochs, and a duplicate
        // file (same records under another name).
        let newer = generate(2, 10_000, 3, &mut offsets, T0 + 4 * HOUR, 4 * HOUR);
        let stragglers = generate(3, 500, 3, &mut offsets, T0 + HOUR, HOUR);
        let dup: Vec<Gen> = events
            .iter()
            .filter(|g| g.epoch() == epoch0 + 2)
            .take(200)
            .cloned()
            .collect();
        write_archive(&store, "events", &newer).await;
        write_archive(&store, "events", &stragglers).await;
        // Write the duplicates as a file named by a later offset.
        let dup: Vec<&Gen> = dup.iter().collect();
        write_file(&store, epoch0 + 2, 7, 999_999, &dup).await;
        events.extend(newer);
        events.extend(stragglers);
        set_cut(&store, epoch0 + 8).await;
        let s2 = run_batch(&cfg, store.clone(), RunOptions::default())
            .await
            .unwrap();
        assert!(s2.views.iter().all(|v| !v.full), "{s2:?}");
        check_all(&store, &cfg, &events, epoch0 + 8).await;
        let incremental: Vec<Snapshot> = {
            let mut v = Vec::new();
            for name in VIEWS {
                v.push(snapshot(&store, &cfg, name).await);
            }
            v
        };

        // A run with nothing new publishes the new cut and carries every day.
        set_cut(&store, epoch0 + 9).await;
        let s3 = run_batch(&cfg, store.clone(), RunOptions::default())
            .await
            .unwrap();
        for v in &s3.views {
            assert_eq!(v.days_recomputed, 0, "{url} {v:?}");
            assert!(v.days_carried > 0);
        }
        assert_eq!(
            manifest(&store, "page_views").await.unwrap().cut(),
            epoch0 + 9
        );
        check_all(&store, &cfg, &events, epoch0 + 9).await;

        // Full recompute gives the same snapshots.
        let s4 = run_batch(
            &cfg,
            store.clone(),
            RunOptions {
                full: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(s4.views.iter().all(|v| v.full && v.days_carried == 0));
        for (i, name) in VIEWS.iter().enumerate() {
            assert_eq!(
                snapshot(&store, &cfg, name).await,
                incremental[i],
                "{url} {name}"
            );
        }
    }
}

/// Write `records` as one archive file of `epoch`, named after `partition`
/// and `start`: how a rewrite after a crash (or a hand-made file) looks.
async fn write_file(
    store: &Arc<dyn ObjectStore>,
    epoch: i64,
    partition: i32,
    start: i64,
    records: &[&Gen],
) {
    let clock = tally_core::time::EpochGrid::new(HOUR);
    let mut rows = tally_batch::archive_file::ArchiveRows::new(start);
    for g in records {
        rows.push(
            "events",
            g.partition,
            g.offset,
            g.kafka_ts(),
            clock,
            &Default::default(),
            g.json(),
        );
    }
    let path = paths::archive_file(epoch, "events", partition, start);
    let promote = tally_batch::promote::Promote::of(&config("memory://"));
    tally_batch::archive_file::write(store.clone(), &path, &mut rows, &promote)
        .await
        .unwrap();
}

/// Duplicates across files equal the truth: a file named after one
/// partition holding copies of every partition's records, a rewrite that
/// overlaps another file's offsets, and a file named after the wrong
/// partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_files_equal_the_truth() {
    let cfg = config("memory://");
    let store = tally_store::open(&cfg.store).unwrap();
    let epoch0 = T0 / HOUR;
    let mut offsets = Vec::new();
    let events = generate(31, 20_000, 4, &mut offsets, T0, 4 * HOUR);
    write_archive(&store, "events", &events).await;
    let of = |epoch: i64, partition: Option<i32>| -> Vec<&Gen> {
        let mut v: Vec<&Gen> = events
            .iter()
            .filter(|g| g.epoch() == epoch && partition.is_none_or(|p| g.partition == p))
            .collect();
        v.sort_by_key(|g| (g.partition, g.offset));
        v
    };
    // Copies of every partition's records in one file named after a fifth.
    let mixed: Vec<&Gen> = of(epoch0 + 1, None).into_iter().step_by(7).collect();
    assert!((0..4).all(|p| mixed.iter().any(|g| g.partition == p)));
    write_file(&store, epoch0 + 1, 9, 1_000_000, &mixed).await;
    // A rewrite of partition 2 that starts inside another file and runs on.
    let p2 = of(epoch0 + 2, Some(2));
    let from = p2.len() / 3;
    write_file(&store, epoch0 + 2, 2, p2[from].offset, &p2[from..]).await;
    // Partition 1's records in a file named after partition 0.
    let p1 = of(epoch0 + 3, Some(1));
    write_file(&store, epoch0 + 3, 0, 2_000_000, &p1[..p1.len() / 2]).await;
    // Records sent with an impossible Kafka time (the generator's malformed
    // kinds) are archived under epochs before 1970 or past the cut, outside
    // the days this run reads.
    let time = tally_core::time::KAFKA_TIME_RANGE;
    let archived = events
        .iter()
        .filter(|g| time.contains(&g.kafka_ts()))
        .count();
    let files_rows = (archived + mixed.len() + (p2.len() - from) + p1.len() / 2) as u64;
    set_cut(&store, epoch0 + 4).await;
    let s = run_batch(
        &cfg,
        store.clone(),
        RunOptions {
            full: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for v in &s.views {
        assert_eq!(v.rows_read, files_rows, "{v:?}");
    }
    check_all(&store, &cfg, &events, epoch0 + 4).await;
}

/// A run that dies after writing some snapshot files leaves the previous
/// snapshot published; the next run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_run_keeps_the_previous_snapshot() {
    for (cfg, _guard) in stores() {
        let mut s = Scenario::archived(cfg, 11, 8_000, 2, 3).await;
        s.cut_at(2).await;
        run_batch(&s.cfg, s.store.clone(), RunOptions::default())
            .await
            .unwrap();
        let before = manifest(&s.store, "page_views").await.unwrap();
        s.more(12, 4_000, T0 + 2 * HOUR, 2).await;
        s.cut_at(4).await;
        let Scenario {
            cfg,
            url,
            store,
            epoch0,
            events,
            ..
        } = s;
        let err = run_batch(
            &cfg,
            store.clone(),
            RunOptions {
                crash_after_files: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, BatchError::Crashed));
        assert_eq!(
            manifest(&store, "page_views").await.unwrap(),
            before,
            "{url}"
        );
        check(&store, &cfg, "page_views", &events, epoch0 + 2).await;
        run_batch(&cfg, store.clone(), RunOptions::default())
            .await
            .unwrap();
        check_all(&store, &cfg, &events, epoch0 + 4).await;
    }
}

/// The lock keeps runs apart; GC deletes only what no manifest refers to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_garbage_collection() {
    for (cfg, _guard) in stores() {
        let s = Scenario::archived(cfg, 21, 5_000, 2, 3).await;
        let Scenario {
            cfg,
            url,
            store,
            epoch0,
            mut offsets,
            mut events,
            ..
        } = s;

        let now = chrono::Utc::now().timestamp_millis();
        let Acquired::Held(held) = lock::acquire(&store, "a", 60_000, now).await.unwrap() else {
            panic!("first acquire must win")
        };
        assert!(matches!(
            lock::acquire(&store, "b", 60_000, now).await.unwrap(),
            Acquired::Busy(_)
        ));
        let err = run_locked(&cfg, store.clone(), RunOptions::default(), &|_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, BatchError::Locked { .. }), "{err:?}");
        // Expired: taken over.
        let Acquired::Held(b) = lock::acquire(&store, "b", 60_000, now + 120_000)
            .await
            .unwrap()
        else {
            panic!("an expired lock is taken over")
        };
        b.release().await.unwrap();
        held.release().await.unwrap(); // no longer ours: a no-op

        // Locked runs with GC (grace 0): superseded files go, carried ones stay.
        run_locked(&cfg, store.clone(), RunOptions::default(), &|_| {})
            .await
            .unwrap();
        let more = generate(22, 2_000, 2, &mut offsets, T0 + 3 * HOUR, HOUR);
        write_archive(&store, "events", &more).await;
        events.extend(more);
        set_cut(&store, epoch0 + 4).await;
        run_locked(&cfg, store.clone(), RunOptions::default(), &|_| {})
            .await
            .unwrap();
        for v in VIEWS {
            let m = manifest(&store, v).await.unwrap();
            let files = tally_store::object::list(store.as_ref(), &paths::view_dir(v))
                .await
                .unwrap();
            let mut listed: Vec<String> = files
                .iter()
                .map(|o| o.location.to_string())
                .filter(|p| *p != paths::manifest(v))
                .collect();
            listed.sort();
            let mut referenced: Vec<String> = m.days().iter().map(|d| d.path.clone()).collect();
            referenced.sort();
            assert_eq!(listed, referenced, "{url} {v}");
        }
        check_all(&store, &cfg, &events, epoch0 + 4).await;
        assert!(
            tally_store::object::get_json::<lock::LockFile>(store.as_ref(), paths::BATCH_LOCK)
                .await
                .unwrap()
                .is_none()
        );
    }
}

/// `recompute` over a range reports progress and leaves the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recompute_a_range_with_progress() {
    let cfg = config("memory://");
    let store = tally_store::open(&cfg.store).unwrap();
    let epoch0 = T0 / HOUR;
    let mut offsets = Vec::new();
    let events = generate(31, 5_000, 2, &mut offsets, T0, 2 * HOUR);
    write_archive(&store, "events", &events).await;
    set_cut(&store, epoch0 + 2).await;
    run_batch(&cfg, store.clone(), RunOptions::default())
        .await
        .unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    let s = tally_batch::recompute(
        &cfg,
        store.clone(),
        "page_views",
        T0 - 86_400_000,
        T0,
        false,
        &|p| seen.lock().unwrap().push(p),
    )
    .await
    .unwrap();
    assert_eq!(s.views.len(), 1);
    assert_eq!(s.views[0].days_recomputed, 1, "{s:?}");
    let seen = seen.into_inner().unwrap();
    assert!(matches!(
        seen.first(),
        Some(tally_batch::Progress::Planned { .. })
    ));
    assert!(matches!(
        seen.last(),
        Some(tally_batch::Progress::Published { .. })
    ));
    check(&store, &cfg, "page_views", &events, epoch0 + 2).await;
    assert!(matches!(
        tally_batch::recompute(&cfg, store.clone(), "nope", 0, 1, false, &|_| {}).await,
        Err(BatchError::UnknownView(_))
    ));
}

/// The cron schedule runs a locked batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_runs_the_batch() {
    let mut cfg = config("memory://");
    cfg.batch.schedule = "*/1 * * * * *".into();
    let store = tally_store::open(&cfg.store).unwrap();
    let mut offsets = Vec::new();
    let events = generate(41, 1_000, 1, &mut offsets, T0, HOUR);
    write_archive(&store, "events", &events).await;
    set_cut(&store, T0 / HOUR + 1).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(tally_batch::schedule(cfg.clone(), store.clone(), async {
        let _ = rx.await;
    }));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while manifest(&store, "daily").await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled run within 20s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    // Wait for an in-flight run to finish before checking.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    check(&store, &cfg, "daily", &events, T0 / HOUR + 1).await;
}

/// Records laid out as an archiver writes them (per partition, runs of
/// consecutive offsets in Kafka-time order, one file per epoch), so that
/// only a rewrite's files overlap; a file rewritten longer under a new name
/// (a replay that read further) overlaps two others. Only the overlapping
/// files need row-level de-duplication, and the result is the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiver_layout_with_an_overlapping_rewrite_equals_the_truth() {
    for (cfg, _guard) in stores() {
        let store = tally_store::open(&cfg.store).unwrap();
        let epoch0 = T0 / HOUR;
        let mut offsets = Vec::new();
        let mut events = generate(51, 12_000, 3, &mut offsets, T0, 4 * HOUR);
        // Kafka time rising with the offset, per partition.
        for p in 0..3 {
            let mut ts: Vec<i64> = events
                .iter()
                .filter(|g| g.partition == p)
                .map(|g| g.g.kafka_ts_ms)
                .collect();
            ts.sort_unstable();
            let mut it = ts.into_iter();
            for g in events.iter_mut().filter(|g| g.partition == p) {
                g.g.kafka_ts_ms = it.next().unwrap();
            }
        }
        // Rebuild each record's payload timestamp budget: the generator's
        // event times were relative to the old Kafka time; keep them valid by
        // recomputing the truth's verdict instead of the generator's.
        for g in events.iter_mut() {
            g.g.valid =
                tally_testkit::truth::accepts(&g.g.payload, g.g.kafka_ts_ms, &cfg.events.limits());
        }
        write_archive(&store, "events", &events).await;
        // Partition 1's records from the middle of epoch 1 into epoch 2,
        // rewritten as one file named after its first offset.
        let mut p1: Vec<&Gen> = events
            .iter()
            .filter(|g| g.partition == 1 && (g.epoch() == epoch0 + 1 || g.epoch() == epoch0 + 2))
            .collect();
        p1.sort_by_key(|g| g.offset);
        let from = p1.len() / 2;
        write_file(&store, epoch0 + 1, 1, p1[from].offset, &p1[from..]).await;
        set_cut(&store, epoch0 + 4).await;
        run_batch(&cfg, store.clone(), RunOptions::default())
            .await
            .unwrap();
        check_all(&store, &cfg, &events, epoch0 + 4).await;
    }
}

/// Integer sums past `i64` are exact: two values of 6e18 and three of -9e18
/// in one group, and their sum (-1.5e19) in another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_sums_past_i64_are_exact() {
    let cfg = config("memory://");
    let store = tally_store::open(&cfg.store).unwrap();
    let big = |i: i64, country: &str, amount: i64| {
        record(
            0,
            i,
            T0 + i,
            format!(
                r#"{{"event_id":"b{i}","event_type":"purchase","timestamp":{},"user_id":"u{i}","properties":{{"country":"{country}","amount":{amount},"page":"/p"}}}}"#,
                T0 + i
            ),
        )
    };
    let events = vec![
        big(0, "up", 6_000_000_000_000_000_000),
        big(1, "up", 6_000_000_000_000_000_000),
        big(2, "down", -9_000_000_000_000_000_000),
        big(3, "down", -9_000_000_000_000_000_000),
        big(4, "down", -9_000_000_000_000_000_000),
        big(5, "both", 6_000_000_000_000_000_000),
        big(6, "both", 6_000_000_000_000_000_000),
        big(7, "both", -9_000_000_000_000_000_000),
        big(8, "both", -9_000_000_000_000_000_000),
        big(9, "both", -9_000_000_000_000_000_000),
    ];
    write_archive(&store, "events", &events).await;
    set_cut(&store, T0 / HOUR + 1).await;
    run_batch(&cfg, store.clone(), RunOptions::default())
        .await
        .unwrap();
    check_all(&store, &cfg, &events, T0 / HOUR + 1).await;
    let snap = snapshot(&store, &cfg, "by_type").await;
    let sum_of = |country: &str| {
        snap[&(
            T0,
            vec![Some("purchase".to_owned()), Some(country.to_owned())],
        )][1]
            .clone()
    };
    assert_eq!(
        sum_of("up"),
        Agg::Sum {
            int: 12_000_000_000_000_000_000,
            float: 0.0
        }
    );
    assert_eq!(
        sum_of("down"),
        Agg::Sum {
            int: -27_000_000_000_000_000_000,
            float: 0.0
        }
    );
    assert_eq!(
        sum_of("both"),
        Agg::Sum {
            int: -15_000_000_000_000_000_000,
            float: 0.0
        }
    );
}

/// A store of v1 files (written before promoted columns), v2 files, and v2
/// files that promoted none of the views' keys recomputes to the truth,
/// fully and incrementally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_of_v1_and_v2_files_equal_the_truth() {
    for (cfg, _guard) in stores() {
        let store = tally_store::open(&cfg.store).unwrap();
        let epoch0 = T0 / HOUR;
        let mut offsets = Vec::new();
        let old = generate(61, 8_000, 2, &mut offsets, T0, 2 * HOUR);
        write_archive_with(&store, "events", &old, &Promote::legacy_v1()).await;
        let bare = generate(62, 4_000, 2, &mut offsets, T0 + 2 * HOUR, HOUR);
        write_archive_with(&store, "events", &bare, &Promote::default()).await;
        set_cut(&store, epoch0 + 3).await;
        run_batch(&cfg, store.clone(), RunOptions::default())
            .await
            .unwrap();
        let mut events = old;
        events.extend(bare);
        check_all(&store, &cfg, &events, epoch0 + 3).await;
        // New v2 files, some stragglers among them, then an incremental run.
        let newer = generate(63, 6_000, 2, &mut offsets, T0 + 3 * HOUR, 2 * HOUR);
        write_archive(&store, "events", &newer).await;
        events.extend(newer);
        set_cut(&store, epoch0 + 5).await;
        let s = run_batch(&cfg, store.clone(), RunOptions::default())
            .await
            .unwrap();
        assert!(s.views.iter().all(|v| !v.full));
        check_all(&store, &cfg, &events, epoch0 + 5).await;
    }
}
