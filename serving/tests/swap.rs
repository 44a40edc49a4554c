//! A manifest swap while queries run never mixes two snapshots in one answer.
//!
//! Two runs of the same events with different cuts (12 h and 36 h after
//! T0) are published in turn, again and again, while four tasks query the
//! whole span. Each run is exact with the speed slices at or above its own
//! cut; an answer that took the files of one run and the cut (or the slices)
//! of the other would miss or double-count the events between the cuts. So
//! every answer must equal the fold of the events, and its cut must be the
//! cut of the run it names. A small day cache makes the queries re-read
//! their files, so the swaps land in the middle of them.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use tally_core::config::ByteSize;
use tally_core::time::Granularity;
use tally_serving::{router, AppState, ServeOptions};

async fn manifest(store: &InMemory) -> bytes::Bytes {
    store
        .get(&Path::from("views/pv/_manifest.json"))
        .await
        .expect("manifest")
        .bytes()
        .await
        .expect("bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_swap_during_queries_never_mixes_two_snapshots() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let view = view();
    let evs = Arc::new(events(37, 4000));
    let (cut_a, cut_b) = (T0 / EPOCH_MS + 12, T0 / EPOCH_MS + 36);
    let store = Arc::new(InMemory::new());
    publish_snapshot(&store, &view, &evs, cut_a, "a").await;
    let manifest_a = manifest(&store).await;
    publish_snapshot(&store, &view, &evs, cut_b, "b").await;
    let manifest_b = manifest(&store).await;
    write_speed(&redis.url(), "t", &view, &evs).await;

    let mut cfg = config(&redis.url(), "t");
    cfg.serve.cache_bytes = ByteSize(50_000);
    let state = AppState::new(cfg, store.clone(), ServeOptions::default()).expect("state");
    state.refresh().await;
    let app = router(state.clone());

    let done = Arc::new(AtomicBool::new(false));
    let q = Q {
        from: T0,
        to: T0 + SPAN_MS,
        gran: Granularity::HOUR,
        group_by: vec![0],
        filters: vec![],
        measures: MEASURES.to_vec(),
    };
    let queries: Vec<_> = (0..4)
        .map(|_| {
            let (app, done, evs, q) = (app.clone(), done.clone(), evs.clone(), q.clone());
            tokio::spawn(async move {
                let mut seen = [0usize; 2];
                while !done.load(Ordering::SeqCst) {
                    let (s, body) = get(&app, &q.url()).await;
                    assert_eq!(s, 200, "{body}");
                    compare(&body, &q, &evs);
                    let run = body["freshness"]["snapshot_run_id"].as_str().expect("run");
                    let cut = body["cut"].as_i64().expect("cut");
                    match run {
                        "a" => assert_eq!(cut, cut_a),
                        "b" => assert_eq!(cut, cut_b),
                        other => panic!("unknown run {other}"),
                    }
                    seen[usize::from(run == "b")] += 1;
                }
                seen
            })
        })
        .collect();
    for round in 0..40 {
        let m = if round % 2 == 0 {
            &manifest_a
        } else {
            &manifest_b
        };
        store
            .put(
                &Path::from("views/pv/_manifest.json"),
                PutPayload::from(m.clone()),
            )
            .await
            .expect("put");
        assert_eq!(state.refresh().await, 1);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    done.store(true, Ordering::SeqCst);
    let mut seen = [0usize; 2];
    for t in queries {
        let s = t.await.expect("query task");
        seen[0] += s[0];
        seen[1] += s[1];
    }
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "answers from both runs: {seen:?}"
    );
}
