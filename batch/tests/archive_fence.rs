//! The archiver's fence on every kind of store: a stale progress version loses
//! (a conflict) where the store has conditional puts (`memory://`, `s3://` on
//! a private moto server), a zombie's claim is refused, progress never moves
//! back on `file://` (no compare-and-swap there), and the cut only moves
//! forward everywhere.

mod common;

use std::sync::Arc;

use common::{config, config_at, S3Server};
use object_store::ObjectStore;
use tally_batch::progress::{self, Fenced};
use tally_store::object::{self as store, StoreError};
use tally_store::paths;
use tally_store::progress::ProgressFile;

/// A store under test: its url, the store, and a guard keeping its backing alive.
type Under = (String, Arc<dyn ObjectStore>, Box<dyn std::any::Any>);

/// The stores: `memory://`, `file://`, and `s3://` when moto is installed.
fn stores() -> Vec<Under> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut out: Vec<Under> = Vec::new();
    for cfg in [
        config("memory://"),
        config(&format!("file://{}", dir.path().display())),
    ] {
        let s = tally_store::open(&cfg.store).expect("open store");
        out.push((cfg.store.url.clone(), s, Box::new(())));
    }
    out[1].2 = Box::new(dir);
    match S3Server::start("tally") {
        Some(s3) => {
            let cfg = config_at("s3://tally/fence", Some(&s3.endpoint));
            let s = tally_store::open(&cfg.store).expect("open s3 store");
            out.push((cfg.store.url.clone(), s, Box::new(s3)));
        }
        None => eprintln!("moto_server not found: skipping s3://"),
    }
    out
}

fn has_cas(url: &str) -> bool {
    !url.starts_with("file://")
}

async fn stored_to(store: &dyn ObjectStore, p: i32) -> i64 {
    let (ProgressFile::V1 { archived_to, .. }, _) =
        store::get_json::<ProgressFile>(store, &paths::archive_progress("events", p))
            .await
            .expect("read progress")
            .expect("progress exists");
    archived_to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_progress_version_loses_where_the_store_can_tell() {
    for (url, store, _guard) in stores() {
        let path = paths::archive_progress("events", 9);
        let file = |to: i64| ProgressFile::V1 {
            topic: "events".into(),
            partition: 9,
            archived_to: to,
            high_watermark: to + 1,
            observed_ms: 0,
            owner: Some(format!("o{to}")),
        };
        let first = store::put_json_if(store.as_ref(), &path, &file(10), None)
            .await
            .expect("create");
        // Creating again: an existing object is a conflict on every store
        // (file:// has create-if-absent).
        assert!(
            matches!(
                store::put_json_if(store.as_ref(), &path, &file(11), None).await,
                Err(StoreError::Conflict(_))
            ),
            "{url}: a second create must conflict"
        );
        let second = store::put_json_if(store.as_ref(), &path, &file(20), Some(&first.version))
            .await
            .expect("update over the version read");
        assert_eq!(second.conditional, has_cas(&url), "{url}");
        let stale =
            store::put_json_if(store.as_ref(), &path, &file(15), Some(&first.version)).await;
        if has_cas(&url) {
            assert!(
                matches!(stale, Err(StoreError::Conflict(_))),
                "{url}: a put over a stale version must conflict, got {stale:?}"
            );
            assert_eq!(stored_to(store.as_ref(), 9).await, 20, "{url}");
        } else {
            // No compare-and-swap: the put overwrites and says so. The
            // archiver's claims check before writing instead (next test).
            assert!(
                matches!(stale, Ok(ref w) if !w.conditional),
                "{url}: {stale:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_claim_wins_and_progress_never_moves_back() {
    for (url, store, _guard) in stores() {
        let s = store.as_ref();
        // The zombie claimed first and archived to 100.
        let mut zombie = progress::claim(s, "events", 0, 0).await.expect("claim");
        assert_eq!(
            zombie.advance(s, 100, None).await.expect("advance"),
            Fenced::Held,
            "{url}"
        );
        // A rebalance gives the partition to a new owner, which starts at 100
        // and moves on to 250.
        let mut owner = progress::claim(s, "events", 0, 0).await.expect("claim");
        assert_eq!(
            owner.archived_to, 100,
            "{url}: the claim resumes at the stored position"
        );
        assert_eq!(
            owner
                .advance(s, 250, Some((250, 7)))
                .await
                .expect("advance"),
            Fenced::Held
        );
        // The zombie's next roll (to 180, behind the owner) is fenced off.
        assert!(!zombie.still_ours(s).await.expect("check"), "{url}");
        assert_eq!(
            zombie.advance(s, 180, None).await.expect("advance"),
            Fenced::Lost,
            "{url}: the zombie's write must lose"
        );
        assert_eq!(stored_to(s, 0).await, 250, "{url}: progress moved back");
        // And the owner is unaffected.
        assert!(owner.still_ours(s).await.expect("check"), "{url}");
        assert_eq!(
            owner.advance(s, 300, None).await.expect("advance"),
            Fenced::Held
        );
        assert_eq!(stored_to(s, 0).await, 300, "{url}");
        // A claim never moves progress back either, even from an old low watermark.
        let again = progress::claim(s, "events", 0, 0).await.expect("claim");
        assert_eq!(again.archived_to, 300, "{url}");
        assert_eq!(stored_to(s, 0).await, 300, "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cut_only_moves_forward_and_waits_for_every_partition() {
    for (url, store, _guard) in stores() {
        let s = store.as_ref();
        let grid = tally_core::time::EpochGrid::new(1000);
        let parts = vec![("events".to_string(), 2)];
        assert_eq!(
            progress::publish_cut(s, 5, 1).await.expect("publish"),
            5,
            "{url}"
        );
        assert_eq!(
            progress::publish_cut(s, 4, 2).await.expect("publish"),
            5,
            "{url}"
        );
        assert_eq!(
            progress::published_cut(s).await.expect("read"),
            Some(5),
            "{url}"
        );
        // Partition 1 has no progress: no cut from the stored progress.
        let mut c0 = progress::claim(s, "events", 0, 0).await.expect("claim");
        c0.advance(s, 10, Some((10, 9_000))).await.expect("advance");
        assert_eq!(
            progress::cut_from_progress(s, &parts, grid, 0)
                .await
                .expect("cut"),
            None,
            "{url}"
        );
        let mut c1 = progress::claim(s, "events", 1, 0).await.expect("claim");
        c1.advance(s, 3, Some((3, 7_500))).await.expect("advance");
        assert_eq!(
            progress::cut_from_progress(s, &parts, grid, 0)
                .await
                .expect("cut"),
            Some(7),
            "{url}"
        );
        assert_eq!(
            progress::publish_cut(s, 7, 3).await.expect("publish"),
            7,
            "{url}"
        );
    }
}
