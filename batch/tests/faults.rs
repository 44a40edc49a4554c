//! Faults injected into the store under a batch run: a lock taken over
//! mid-run, snapshot files deleted behind a manifest, unreadable archive
//! files (a bad footer, or a bad page behind a good one), a corrupt
//! manifest, an archive file rewritten under the same name.
//! Each scenario compares the published snapshots
//! with the truth (the testkit's plain fold over the generated records).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tally_batch::lock::LockFile;
use tally_batch::{run_locked, BatchError, Progress, RunOptions};
use tally_store::manifest::Manifest;
use tally_store::paths;

/// Every object under the view's folder but its manifest, sorted.
async fn listed(store: &Arc<dyn ObjectStore>, view: &str) -> Vec<String> {
    let mut v: Vec<String> = tally_store::object::list(store.as_ref(), &paths::view_dir(view))
        .await
        .unwrap()
        .iter()
        .map(|o| o.location.to_string())
        .filter(|p| *p != paths::manifest(view))
        .collect();
    v.sort();
    v
}

/// Every file the view's manifest refers to exists.
async fn assert_files_exist(store: &Arc<dyn ObjectStore>, view: &str) {
    let m = manifest(store, view).await.expect("a manifest");
    let present = listed(store, view).await;
    for d in m.days() {
        assert!(present.contains(&d.path), "{view}: {} is gone", d.path);
    }
}

/// Run A stalls past its lock's TTL (simulated by rewriting its lock object
/// as expired after A wrote its first snapshot file); run B takes the lock
/// over, publishes and collects garbage (grace 0: A's files go). A then
/// finds its lock lost and publishes nothing: every manifest stays B's, the
/// files they list exist, and the snapshots equal the truth. The next run
/// collects A's leftovers and still equals the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lock_is_taken_over_publishes_nothing() {
    for (cfg, _guard) in stores() {
        let mut s = Scenario::archived(cfg, 71, 6_000, 2, 2).await;
        s.run().await;
        s.more(72, 6_000, T0 + 2 * HOUR, 2).await;
        s.cut_at(4).await;
        let Scenario {
            cfg,
            url,
            store,
            epoch0,
            events,
            ..
        } = s;

        let handle = tokio::runtime::Handle::current();
        let taken = AtomicBool::new(false);
        let b_manifests = std::sync::Mutex::new(Vec::new());
        let takeover = |p: Progress| {
            if !matches!(p, Progress::DayWritten { .. }) || taken.swap(true, Ordering::SeqCst) {
                return;
            }
            tokio::task::block_in_place(|| {
                handle.block_on(async {
                    let (lock, _) = tally_store::object::get_json::<LockFile>(
                        store.as_ref(),
                        paths::BATCH_LOCK,
                    )
                    .await
                    .unwrap()
                    .expect("run A holds the lock");
                    // A stalled: its lock expired.
                    tally_store::object::put_json(
                        store.as_ref(),
                        paths::BATCH_LOCK,
                        &LockFile {
                            until_ms: 0,
                            ..lock
                        },
                    )
                    .await
                    .unwrap();
                    run_locked(&cfg, store.clone(), RunOptions::default(), &|_| {})
                        .await
                        .expect("run B takes the expired lock over");
                    let mut ms = Vec::new();
                    for v in VIEWS {
                        ms.push(manifest(&store, v).await.unwrap());
                    }
                    *b_manifests.lock().unwrap() = ms;
                })
            });
        };
        let err = run_locked(&cfg, store.clone(), RunOptions::default(), &takeover)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BatchError::LockLost { .. }),
            "{url}: run A must fail with LockLost, got {err:?}"
        );
        assert!(taken.load(Ordering::SeqCst), "{url}: the takeover ran");
        let b_manifests = b_manifests.into_inner().unwrap();
        for (v, b) in VIEWS.iter().zip(&b_manifests) {
            assert_eq!(&manifest(&store, v).await.unwrap(), b, "{url} {v}");
            assert_files_exist(&store, v).await;
        }
        check_all(&store, &cfg, &events, epoch0 + 4).await;

        // The next run publishes over B's manifests and collects A's files.
        run_locked(
            &cfg,
            store.clone(),
            RunOptions {
                full: true,
                ..Default::default()
            },
            &|_| {},
        )
        .await
        .unwrap();
        for v in VIEWS {
            let m = manifest(&store, v).await.unwrap();
            let mut referenced: Vec<String> = m.days().iter().map(|d| d.path.clone()).collect();
            referenced.sort();
            assert_eq!(listed(&store, v).await, referenced, "{url} {v}");
        }
        check_all(&store, &cfg, &events, epoch0 + 4).await;
    }
}

/// A snapshot file deleted behind the manifest (by hand, or by a run that
/// should not have collected it) is not carried into the next manifest:
/// its day is recomputed (the only one, in a run with no new files), and
/// the snapshot equals the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_snapshot_file_is_recomputed_not_carried() {
    for (cfg, _guard) in stores() {
        let s = Scenario::archived(cfg, 81, 6_000, 2, 3).await;
        s.run().await;
        let Scenario {
            cfg,
            url,
            store,
            epoch0,
            events,
            ..
        } = s;
        // Delete the earliest day file of each view.
        for v in VIEWS {
            let m = manifest(&store, v).await.unwrap();
            let first = &m.days()[0];
            tally_store::object::delete(store.as_ref(), vec![Path::from(first.path.as_str())])
                .await
                .unwrap();
        }
        // A run with nothing new would carry every day.
        set_cut(&store, epoch0 + 4).await;
        let s = run_locked(&cfg, store.clone(), RunOptions::default(), &|_| {})
            .await
            .unwrap();
        for v in &s.views {
            assert!(!v.full, "{url} {v:?}");
            assert_eq!(v.days_recomputed, 1, "{url} {v:?}");
        }
        for v in VIEWS {
            assert_files_exist(&store, v).await;
        }
        check_all(&store, &cfg, &events, epoch0 + 4).await;
    }
}

/// Overwrite an object with `bytes`.
async fn overwrite(store: &Arc<dyn ObjectStore>, path: &str, bytes: &[u8]) {
    store
        .put(&Path::from(path), PutPayload::from(bytes.to_vec()))
        .await
        .unwrap();
}

/// One archive file truncated (no Parquet footer) and one whose footer lacks
/// Tally's metadata, among many: the run goes on, each view's snapshot equals
/// the fold over the records of the other files, and the run summary and
/// each manifest name the two files. Once the files are good again, the next
/// run reads them and equals the truth of every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_archive_files_are_skipped_and_reported() {
    for (cfg, _guard) in stores() {
        let s = Scenario::archived(cfg, 91, 12_000, 3, 4).await;
        let Scenario {
            cfg,
            url,
            store,
            epoch0,
            events,
            files,
            ..
        } = s;
        assert!(files.len() >= 10, "{files:?}");
        let (truncated, bare) = (files[2].clone(), files[7].clone());
        let good_bytes = |p: &str| {
            let store = store.clone();
            let p = p.to_owned();
            async move {
                store
                    .get(&Path::from(p.as_str()))
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
            }
        };
        let (truncated_good, bare_good) = (good_bytes(&truncated).await, good_bytes(&bare).await);
        overwrite(
            &store,
            &truncated,
            &truncated_good[..truncated_good.len() / 2],
        )
        .await;
        overwrite(&store, &bare, &plain_parquet()).await;

        let s = run_locked(&cfg, store.clone(), RunOptions::default(), &|_| {})
            .await
            .unwrap();
        let skipped: Vec<&str> = s.skipped.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(skipped, vec![truncated.as_str(), bare.as_str()], "{url}");
        assert!(
            s.skipped[1].reason.contains("tally.days"),
            "{:?}",
            s.skipped
        );
        // The truth without the records of the two bad files.
        let in_file = |g: &Gen, path: &str| {
            let f = paths::parse_archive_file(path).unwrap();
            g.epoch() == f.epoch && g.partition == f.partition
        };
        let rest: Vec<Gen> = events
            .iter()
            .filter(|g| !in_file(g, &truncated) && !in_file(g, &bare))
            .cloned()
            .collect();
        assert!(rest.len() < events.len());
        check_all(&store, &cfg, &rest, epoch0 + 4).await;
        for v in VIEWS {
            let Some(Manifest::V2(m)) = manifest(&store, v).await else {
                panic!("a v2 manifest")
            };
            let listed: Vec<&str> = m.skipped.iter().map(|f| f.path.as_str()).collect();
            assert_eq!(listed, skipped, "{url} {v}");
            assert!(m.inputs.iter().all(|i| !skipped.contains(&i.path.as_str())));
        }
        // The files are left in place, untouched.
        assert_eq!(
            good_bytes(&truncated).await.len(),
            truncated_good.len() / 2,
            "{url}"
        );

        // Good copies restored: an incremental run reads them.
        overwrite(&store, &truncated, &truncated_good).await;
        overwrite(&store, &bare, &bare_good).await;
        let s = run_locked(&cfg, store.clone(), RunOptions::default(), &|_| {})
            .await
            .unwrap();
        assert!(s.skipped.is_empty(), "{url} {s:?}");
        assert!(s.views.iter().all(|v| !v.full), "{url} {s:?}");
        check_all(&store, &cfg, &events, epoch0 + 4).await;
        for v in VIEWS {
            let Some(Manifest::V2(m)) = manifest(&store, v).await else {
                panic!("a v2 manifest")
            };
            assert!(m.skipped.is_empty());
        }
    }
}

/// A valid Parquet file with none of Tally's footer metadata.
/// `good` with its `column` chunk overwritten: the footer still reads, the
/// chunk's pages do not.
fn with_corrupt_page(good: &[u8], column: &str) -> Vec<u8> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(bytes::Bytes::copy_from_slice(good)).unwrap();
    let chunk = reader
        .metadata()
        .row_group(0)
        .columns()
        .iter()
        .find(|c| c.column_path().string() == column)
        .expect("the column")
        .clone();
    let at = chunk
        .dictionary_page_offset()
        .unwrap_or(chunk.data_page_offset()) as usize;
    let len = chunk.compressed_size() as usize;
    let mut bad = good.to_vec();
    bad[at..at + len].fill(0xff);
    bad
}

/// An archive file whose footer is good but whose `time_ms` column has a
/// page that cannot be decoded: it fails inside the day's Polars plan, not
/// when the footers are listed. The run finds it, leaves it out, reports it
/// in the summary and each manifest, and the snapshots equal the fold over
/// the records of the other files; with the good bytes back, the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_page_behind_a_good_footer_is_skipped_and_reported() {
    for (cfg, _guard) in stores() {
        let s = Scenario::archived(cfg, 93, 12_000, 3, 4).await;
        let Scenario {
            cfg,
            url,
            store,
            epoch0,
            events,
            files,
            ..
        } = s;
        let bad = files
            .iter()
            .find(|p| paths::parse_archive_file(p).is_some_and(|f| f.epoch == epoch0 + 1))
            .expect("a file of the second hour")
            .clone();
        let good = store
            .get(&Path::from(bad.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        overwrite(&store, &bad, &with_corrupt_page(&good, "time_ms")).await;

        let s = run_locked(&cfg, store.clone(), RunOptions::default(), &|_| {})
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let skipped: Vec<&str> = s.skipped.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(skipped, vec![bad.as_str()], "{url}");
        let f = paths::parse_archive_file(&bad).unwrap();
        let rest: Vec<Gen> = events
            .iter()
            .filter(|g| !(g.epoch() == f.epoch && g.partition == f.partition))
            .cloned()
            .collect();
        assert!(rest.len() < events.len());
        check_all(&store, &cfg, &rest, epoch0 + 4).await;
        for v in VIEWS {
            let Some(Manifest::V2(m)) = manifest(&store, v).await else {
                panic!("a v2 manifest")
            };
            let listed: Vec<&str> = m.skipped.iter().map(|f| f.path.as_str()).collect();
            assert_eq!(listed, skipped, "{url} {v}");
        }

        overwrite(&store, &bad, &good).await;
        let s = run_locked(&cfg, store.clone(), RunOptions::default(), &|_| {})
            .await
            .unwrap();
        assert!(s.skipped.is_empty(), "{url} {s:?}");
        check_all(&store, &cfg, &events, epoch0 + 4).await;
    }
}

fn plain_parquet() -> Vec<u8> {
    use arrow_array::{Int64Array, RecordBatch};
    let batch = RecordBatch::try_from_iter([(
        "offset",
        Arc::new(Int64Array::from(vec![1_i64, 2, 3])) as arrow_array::ArrayRef,
    )])
    .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(Vec::new(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.into_inner().unwrap()
}

/// A manifest that is not valid JSON does not block the batch: a plain run
/// and a `--full` run both recompute the view in full over it, keep the bad
/// object aside under `quarantine/`, and equal the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_manifest_is_kept_aside_and_recomputed_over() {
    for (cfg, _guard) in stores() {
        let s = Scenario::archived(cfg, 95, 6_000, 2, 2).await;
        s.run().await;
        let Scenario {
            cfg,
            url,
            store,
            epoch0,
            events,
            ..
        } = s;
        for full in [false, true] {
            overwrite(
                &store,
                &paths::manifest("by_type"),
                b"{\"version\":\"2\",\"vi",
            )
            .await;
            let s = run_locked(
                &cfg,
                store.clone(),
                RunOptions {
                    full,
                    ..Default::default()
                },
                &|_| {},
            )
            .await
            .unwrap();
            let by_type = s.views.iter().find(|v| v.view == "by_type").unwrap();
            assert!(by_type.full, "{url}");
            let copy = by_type.corrupt_manifest.as_deref().expect("kept aside");
            let kept = store
                .get(&Path::from(copy))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(&kept[..], b"{\"version\":\"2\",\"vi", "{url}");
            assert!(s
                .views
                .iter()
                .filter(|v| v.view != "by_type")
                .all(|v| v.corrupt_manifest.is_none()));
            check_all(&store, &cfg, &events, epoch0 + 2).await;
        }
    }
}

/// An archive file rewritten under the same name between two runs (a crash
/// replay that read further writes a longer file of the same first offset),
/// its modification time unchanged where the test can set it (`file://`:
/// as a clock behind the first writer's, or S3's one-second precision,
/// would leave it). Before, only the modification time told a rewrite, so
/// the second run carried the first run's days over and missed the new
/// records; now the manifest's (size, e-tag, last offset) per input tells,
/// and the snapshots equal the truth of every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_under_the_same_name_is_read_again() {
    for (cfg, _guard) in stores() {
        let s = Scenario::archived(cfg, 81, 4_000, 2, 1).await;
        s.run().await;
        let Scenario {
            cfg,
            store,
            epoch0,
            mut offsets,
            mut events,
            files: names,
            ..
        } = s;
        check_all(&store, &cfg, &events, epoch0 + 1).await;

        // The same epoch read further: the same names, longer files.
        let on_disk = |name: &str| {
            cfg.store
                .url
                .strip_prefix("file://")
                .map(|root| std::path::Path::new(root).join(name))
        };
        let mtimes: Vec<_> = names
            .iter()
            .filter_map(|n| on_disk(n))
            .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
            .collect();
        events.extend(generate(82, 1_000, 2, &mut offsets, T0, HOUR));
        let again = write_archive(&store, "events", &events).await;
        assert!(names.iter().all(|n| again.contains(n)), "{again:?}");
        for (p, t) in names.iter().filter_map(|n| on_disk(n)).zip(mtimes) {
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(t).unwrap();
        }
        run_locked(&cfg, store.clone(), RunOptions::default(), &|_| {})
            .await
            .unwrap();
        check_all(&store, &cfg, &events, epoch0 + 1).await;
    }
}
