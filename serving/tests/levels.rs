//! Roll-up levels: answers read from the 1h and 1d levels equal answers read
//! from the base level alone, and both equal the fold of the events; a
//! query that whole days answer reads no base file.
//!
//! Two stores hold the same events below the cut: one with every level of
//! the view (1m, 1h, 1d), one with the base level only (what a manifest
//! written before roll-ups lists). Both servers share one Redis.

mod common;

use std::sync::Arc;

use common::*;
use futures::StreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tally_core::time::Granularity;
use tally_serving::{router, AppState, ServeOptions};

async fn app(redis: &str, store: Arc<InMemory>) -> (AppState, axum::Router) {
    let state = AppState::new(config(redis, "t"), store, ServeOptions::default()).expect("state");
    assert_eq!(state.refresh().await, 1);
    (state.clone(), router(state))
}

#[tokio::test]
async fn roll_up_levels_answer_as_the_base_level_does() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let view = view();
    let evs = events(17, 4000);
    let cut = T0 / EPOCH_MS + 30;
    let rolled = Arc::new(InMemory::new());
    let base = Arc::new(InMemory::new());
    publish_snapshot(&rolled, &view, &evs, cut, "rolled").await;
    publish_snapshot_at(&base, &view, &evs, cut, "base", &[view.granularity]).await;
    write_speed(&redis.url(), "t", &view, &evs).await;
    let (_, with_levels) = app(&redis.url(), rolled.clone()).await;
    let (_, base_only) = app(&redis.url(), base).await;

    let mut rng = StdRng::seed_from_u64(5);
    let mut queries: Vec<Q> = (0..60).map(|_| random_query(&mut rng)).collect();
    // Spans that the coarse levels answer whole, and ragged ones.
    for (from, to, gran) in [
        (T0, T0 + SPAN_MS, Granularity::DAY),
        (T0 - 86_400_000, T0 + 3 * 86_400_000, Granularity::DAY),
        (
            T0 + 90 * 60_000,
            T0 + 30 * 3_600_000 + 7 * 60_000,
            Granularity::HOUR,
        ),
        (T0 + 13 * 3_600_000, T0 + 40 * 3_600_000, Granularity::DAY),
    ] {
        queries.push(Q {
            from,
            to,
            gran,
            group_by: vec![0, 1],
            filters: vec![],
            measures: MEASURES.to_vec(),
        });
    }
    for q in &queries {
        let (s1, a) = get(&with_levels, &q.url()).await;
        let (s2, b) = get(&base_only, &q.url()).await;
        assert_eq!((s1.as_u16(), s2.as_u16()), (200, 200), "{}", q.url());
        compare(&a, q, &evs);
        assert_eq!(a["series"], b["series"], "{}", q.url());
        assert_eq!(a["totals"], b["totals"], "{}", q.url());
    }

    // Whole days are read from the daily level: with every base file gone
    // from the store (after the manifest was adopted, before any read),
    // they still answer exactly, while a ragged range cannot.
    let (_, cold) = app(&redis.url(), rolled.clone()).await;
    let base_files: Vec<Path> = rolled
        .list(Some(&Path::from("views/pv/run=rolled/g=1m")))
        .map(|m| m.expect("list").location)
        .collect::<Vec<_>>()
        .await;
    assert!(!base_files.is_empty());
    for p in base_files {
        rolled.delete(&p).await.expect("delete");
    }
    let whole = Q {
        from: T0,
        to: T0 + SPAN_MS,
        gran: Granularity::DAY,
        group_by: vec![0],
        filters: vec![],
        measures: MEASURES.to_vec(),
    };
    let (s, body) = get(&cold, &whole.url()).await;
    assert_eq!(s, 200);
    compare(&body, &whole, &evs);
    let ragged = Q {
        from: T0 + 60_000,
        ..whole.clone()
    };
    let (_, body) = get(&cold, &ragged.url()).await;
    assert_eq!(body["degraded"], serde_json::json!(["store"]));
}
