//! Bounded memory: with a day cache budget smaller than one day file, every
//! answer still equals the fold of the events, and the cache never holds more
//! than its budget.

mod common;

use std::sync::Arc;

use common::*;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tally_core::config::ByteSize;
use tally_serving::snapshot::day::DayData;
use tally_serving::{router, AppState, ServeOptions};
use tally_store::manifest::Manifest;

const BUDGET: u64 = 20_000;

#[tokio::test]
async fn a_budget_smaller_than_a_day_still_answers_exactly() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let view = view();
    let evs = events(29, 4000);
    let cut = T0 / EPOCH_MS + 40;
    let store = Arc::new(InMemory::new());
    publish_snapshot(&store, &view, &evs, cut, "small").await;
    write_speed(&redis.url(), "t", &view, &evs).await;

    // The largest day file decodes to more than the budget.
    let m: Manifest = serde_json::from_slice(
        &store
            .get(&Path::from("views/pv/_manifest.json"))
            .await
            .expect("manifest")
            .bytes()
            .await
            .expect("bytes"),
    )
    .expect("json");
    let mut largest = 0;
    for d in m.days() {
        let bytes = store
            .get(&Path::from(d.path.as_str()))
            .await
            .expect("file")
            .bytes()
            .await
            .expect("bytes");
        let data =
            DayData::decode(&view, d.level_ms.unwrap_or(60_000), &d.path, bytes).expect("decode");
        largest = largest.max(data.bytes);
    }
    assert!(
        largest as u64 > BUDGET,
        "a day file of {largest} bytes fits the budget: the test would prove nothing"
    );

    // Not through Config::validate (which asks for at least 1 MiB).
    let mut cfg = config(&redis.url(), "t");
    cfg.serve.cache_bytes = ByteSize(BUDGET);
    let state = AppState::new(cfg, store, ServeOptions::default()).expect("state");
    state.refresh().await;
    let app = router(state);
    let mut rng = StdRng::seed_from_u64(31);
    for _ in 0..40 {
        let q = random_query(&mut rng);
        let (s, body) = get(&app, &q.url()).await;
        assert_eq!(s, 200, "{} -> {body}", q.url());
        compare(&body, &q, &evs);
        let (_, status) = get(&app, "/api/v1/status").await;
        let held = status["day_cache_bytes"].as_u64().expect("day_cache_bytes");
        assert!(held <= BUDGET, "the cache holds {held} bytes");
    }
}
