//! The answer cache (`serve.answer_ttl`, off by default): a repeated query is
//! served from it within the TTL (same speed-read time, no new merge), a
//! speed-layer write shows right after the TTL has passed
//! (stale-while-revalidate), and concurrent identical queries share one merge.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use object_store::memory::InMemory;
use tally_core::agg::Num;
use tally_serving::{router, AppState, ServeOptions};

#[tokio::test]
async fn answers_are_reused_within_the_ttl_and_speed_writes_show_after_it() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let mut evs = events(61, 800);
    let cut = T0 / EPOCH_MS + 20;
    let store = Arc::new(InMemory::new());
    publish_snapshot(&store, &view(), &evs, cut, "c1").await;
    write_speed(&redis.url(), "t", &view(), &evs).await;
    let ttl = Duration::from_millis(400);
    let mut cfg = config(&redis.url(), "t");
    cfg.serve.answer_ttl = tally_core::config::Millis(400);
    let state = AppState::new(cfg, store, ServeOptions::default()).expect("state");
    state.refresh().await;
    let app = router(state);
    let url = format!(
        "/api/v1/views/pv/query?from={T0}&to={}&granularity=1h",
        T0 + SPAN_MS
    );

    // Concurrent identical queries: one answer, one Redis read.
    let answers = futures::future::join_all((0..8).map(|_| get(&app, &url))).await;
    let first = &answers[0].1;
    assert_eq!(first["totals"]["views"].as_u64(), Some(evs.len() as u64));
    for (s, a) in &answers {
        assert_eq!(*s, 200);
        assert_eq!(
            a["freshness"]["speed_read_ms"],
            first["freshness"]["speed_read_ms"]
        );
    }

    let new = Ev {
        t: T0 + 30 * 3_600_000,
        epoch: cut + 5,
        page: Some("/a".into()),
        country: None,
        duration: Some(Num::Int(3)),
        user: "cache_user".into(),
    };
    write_speed(&redis.url(), "t", &view(), std::slice::from_ref(&new)).await;
    evs.push(new);
    // Within the TTL: the cached answer (it says when Redis was read).
    let (_, cached) = get(&app, &url).await;
    assert_eq!(
        cached["freshness"]["speed_read_ms"],
        first["freshness"]["speed_read_ms"]
    );
    assert_eq!(cached["totals"], first["totals"]);
    // After it: the first request gets the stale answer and starts one
    // recompute in the background; the write shows right after.
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let fresh = loop {
        let (_, a) = get(&app, &url).await;
        if a["totals"]["views"].as_u64() == Some(evs.len() as u64) {
            break a;
        }
        assert_eq!(
            a["totals"], first["totals"],
            "either the old or the new answer"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the write never showed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        fresh["freshness"]["speed_read_ms"].as_i64() > first["freshness"]["speed_read_ms"].as_i64()
    );
}
