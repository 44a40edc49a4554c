//! Batch runs against the truth: a plain fold over the generated events.
//!
//! Each scenario runs on `memory://` and on `file://`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use object_store::ObjectStore;
use tally_batch::lock::{self, Acquired};
use tally_batch::recompute::read_snapshot;
use tally_batch::{run_batch, run_locked, BatchError, RunOptions};
use tally_core::agg::Agg;
use tally_core::config::Config;
use tally_core::manifest::Manifest;
use tally_core::paths;
use tally_testkit::truth::Truth;

async fn manifest(store: &Arc<dyn ObjectStore>, view: &str) -> Option<Manifest> {
    tally_batch::store::get_json::<Manifest>(store.as_ref(), &paths::manifest(view))
        .await
        .unwrap()
        .map(|(m, _)| m)
}

type Snapshot = BTreeMap<(i64, Vec<Option<String>>), Vec<Agg>>;

async fn snapshot(store: &Arc<dyn ObjectStore>, cfg: &Config, view: &str) -> Snapshot {
    let m = manifest(store, view).await.expect("a published manifest");
    let def = cfg.view(view).unwrap();
    let mut out = BTreeMap::new();
    // The view's own level; the roll-up levels are checked against it elsewhere.
    for d in m
        .days()
        .iter()
        .filter(|d| d.level_ms.is_none_or(|l| l == def.granularity.as_ms()))
    {
        let rows = read_snapshot(store.clone(), &d.path, def).await.unwrap();
        assert_eq!(rows.len() as u64, d.rows);
        for (b, dims, aggs) in rows {
            assert_eq!(b.div_euclid(86_400_000), d.day, "bucket in its day's file");
            assert!(out.insert((b, dims), aggs).is_none(), "one row per group");
        }
    }
    out
}

/// A distinct sketch is right when it has exactly the registers of a sketch
/// of the true set (Redis's PFADD of each value), and its estimate is within
/// 2 % (3 for tiny sets, where register collisions dominate) of the true count.
fn distinct_ok(agg: &Agg, users: &std::collections::HashSet<String>) -> bool {
    let Agg::Distinct(h) = agg else { return false };
    let mut reference = tally_core::hll::Hll::new();
    for u in users {
        reference.add(u.as_bytes());
    }
    h.registers() == reference.registers()
        && tally_testkit::truth::within_hll_error(h.count(), users.len())
}

/// Compare a view's snapshot with the truth, measure by measure.
async fn check(store: &Arc<dyn ObjectStore>, cfg: &Config, view: &str, events: &[Gen], cut: i64) {
    check_with(store, cfg, view, &truth(cfg, events, cut)).await;
}

async fn check_with(store: &Arc<dyn ObjectStore>, cfg: &Config, view: &str, truth: &Truth) {
    let snap = snapshot(store, cfg, view).await;
    let truth = truth.view(view);
    assert_eq!(
        snap.keys().collect::<Vec<_>>(),
        truth.cells.map.keys().collect::<Vec<_>>(),
        "{view}: groups"
    );
    for (k, cells) in &truth.cells.map {
        let aggs = &snap[k];
        for ((m, t), a) in truth.measures.iter().zip(cells).zip(aggs) {
            let what = format!("{view}.{} {k:?}", m.name);
            match m.agg.as_str() {
                "count" => assert_eq!(a, &Agg::Count(t.count), "{what}"),
                "sum" => assert_eq!(
                    a,
                    &Agg::Sum {
                        int: t.sum_int,
                        float: t.sum_float
                    },
                    "{what}"
                ),
                "min" => assert_eq!(a, &Agg::Min(t.min), "{what}"),
                "max" => assert_eq!(a, &Agg::Max(t.max), "{what}"),
                "distinct" => assert!(
                    distinct_ok(a, &t.distinct),
                    "{what}: {a:?} vs {}",
                    t.distinct.len()
                ),
                other => panic!("unknown agg {other}"),
            }
        }
    }
}

async fn check_all(store: &Arc<dyn ObjectStore>, cfg: &Config, events: &[Gen], cut: i64) {
    let truth = truth(cfg, events, cut);
    for v in VIEWS {
        check_with(store, cfg, v, &truth).await;
    }
}

/// The stores every scenario runs on: `memory://`, `file://` and, when moto
/// is installed, `s3://` on a private moto server. Each comes with its config
/// and a guard that keeps its backing alive.
fn stores() -> Vec<(Config, Box<dyn std::any::Any>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut out: Vec<(Config, Box<dyn std::any::Any>)> = vec![
        (config("memory://"), Box::new(())),
        (
            config(&format!("file://{}", dir.path().display())),
            Box::new(dir),
        ),
    ];
    match S3Server::start("tally") {
        Some(s3) => out.push((
            config_at("s3://tally/prefix", Some(&s3.endpoint)),
            Box::new(s3),
        )),
        None => eprintln!("moto_server not found: skipping s3://"),
    }
    out
}

/// Full, then incremental with new files, stragglers and duplicates; the
/// incremental snapshot equals a full recompute and the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_runs_equal_the_truth_and_a_full_run() {
    for (cfg, _guard) in stores() {
        let url = cfg.store.url.clone();
        let store = tally_batch::store::open(&cfg.store).unwrap();
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
    tally_batch::archive_file::write(store.clone(), &path, &mut rows)
        .await
        .unwrap();
}

/// The fold split into shards by partition equals the truth for any number
/// of shards, with duplicates that cross shards: a file named after one
/// partition holding copies of every partition's records, a rewrite that
/// overlaps another file's offsets, and a file named after the wrong
/// partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_folds_equal_the_truth_with_duplicates_across_shards() {
    let cfg = config("memory://");
    let store = tally_batch::store::open(&cfg.store).unwrap();
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
    for shards in [1, 2, 3, 4, 8] {
        let s = run_batch(
            &cfg,
            store.clone(),
            RunOptions {
                full: true,
                fold_shards: Some(shards),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        for v in &s.views {
            assert_eq!(v.rows_read, files_rows, "{shards} shards: {v:?}");
        }
        check_all(&store, &cfg, &events, epoch0 + 4).await;
    }
}

/// A run that dies after writing some snapshot files leaves the previous
/// snapshot published; the next run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_run_keeps_the_previous_snapshot() {
    for (cfg, _guard) in stores() {
        let url = cfg.store.url.clone();
        let store = tally_batch::store::open(&cfg.store).unwrap();
        let epoch0 = T0 / HOUR;
        let mut offsets = Vec::new();
        let mut events = generate(11, 8_000, 2, &mut offsets, T0, 3 * HOUR);
        write_archive(&store, "events", &events).await;
        set_cut(&store, epoch0 + 2).await;
        run_batch(&cfg, store.clone(), RunOptions::default())
            .await
            .unwrap();
        let before = manifest(&store, "page_views").await.unwrap();
        let more = generate(12, 4_000, 2, &mut offsets, T0 + 2 * HOUR, 2 * HOUR);
        write_archive(&store, "events", &more).await;
        events.extend(more);
        set_cut(&store, epoch0 + 4).await;
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
        let url = cfg.store.url.clone();
        let store = tally_batch::store::open(&cfg.store).unwrap();
        let epoch0 = T0 / HOUR;
        let mut offsets = Vec::new();
        let mut events = generate(21, 5_000, 2, &mut offsets, T0, 3 * HOUR);
        write_archive(&store, "events", &events).await;
        set_cut(&store, epoch0 + 3).await;

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
            let files = tally_batch::store::list(store.as_ref(), &paths::view_dir(v))
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
            tally_batch::store::get_json::<lock::LockFile>(store.as_ref(), paths::BATCH_LOCK)
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
    let store = tally_batch::store::open(&cfg.store).unwrap();
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
    let store = tally_batch::store::open(&cfg.store).unwrap();
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
