//! The merged query answers exactly as a plain fold of the events.
//!
//! Events with an ingest epoch below the cut are in the snapshot (Parquet in
//! an in-memory store); every event is in Redis (slices below the cut must be
//! ignored). Late events put Redis deltas into buckets the snapshot also has;
//! later buckets are in Redis only; buckets whose events all came before the
//! cut are in the snapshot only.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use common::*;
use object_store::memory::InMemory;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tally_core::time::Granularity;
use tally_serving::{router, AppState, ServeOptions};

struct Fixture {
    _redis: tally_testkit::Redis,
    store: Arc<InMemory>,
    state: AppState,
    app: axum::Router,
    evs: Vec<Ev>,
}

async fn fixture(seed: u64, cut_hours: i64) -> Fixture {
    let redis = tally_testkit::Redis::start().expect("redis");
    let view = view();
    let evs = events(seed, 4000);
    let store = Arc::new(InMemory::new());
    let cut = (T0 / EPOCH_MS) + cut_hours;
    publish_snapshot(&store, &view, &evs, cut, "run1").await;
    write_speed(&redis.url(), "t", &view, &evs).await;
    let state = AppState::new(
        config(&redis.url(), "t"),
        store.clone(),
        ServeOptions::default(),
    )
    .expect("state");
    assert_eq!(state.refresh().await, 1);
    let app = router(state.clone());
    Fixture {
        _redis: redis,
        store,
        state,
        app,
        evs,
    }
}

#[tokio::test]
async fn random_queries_equal_the_fold_of_the_events() {
    let f = fixture(7, 30).await;
    // The fixture really has all three kinds of buckets.
    let cut = T0 / EPOCH_MS + 30;
    let bucket = |e: &Ev| e.t.div_euclid(60_000);
    let snap: HashSet<i64> = f.evs.iter().filter(|e| e.epoch < cut).map(bucket).collect();
    let speed: HashSet<i64> = f
        .evs
        .iter()
        .filter(|e| e.epoch >= cut)
        .map(bucket)
        .collect();
    assert!(
        snap.intersection(&speed).count() > 20,
        "buckets in both layers"
    );
    assert!(
        snap.difference(&speed).count() > 100,
        "snapshot-only buckets"
    );
    assert!(speed.difference(&snap).count() > 100, "speed-only buckets");

    let mut rng = StdRng::seed_from_u64(99);
    for _ in 0..60 {
        let q = random_query(&mut rng);
        let (status, body) = get(&f.app, &q.url()).await;
        assert_eq!(status, 200, "{} -> {body}", q.url());
        assert_eq!(body["cut"].as_i64(), Some(cut));
        compare(&body, &q, &f.evs);
    }
    // The whole span, every measure, grouped by both dimensions, by hour.
    let q = Q {
        from: T0,
        to: T0 + SPAN_MS,
        gran: Granularity::HOUR,
        group_by: vec![0, 1],
        filters: vec![],
        measures: MEASURES.to_vec(),
    };
    let (status, body) = get(&f.app, &q.url()).await;
    assert_eq!(status, 200);
    compare(&body, &q, &f.evs);
    assert!(body["freshness"]["speed_slices"].as_u64().unwrap_or(0) > 0);
}

#[tokio::test]
async fn a_new_snapshot_with_a_later_cut_is_swapped_in_and_answers_the_same() {
    let f = fixture(11, 10).await;
    let q = Q {
        from: T0,
        to: T0 + SPAN_MS,
        gran: Granularity::HOUR,
        group_by: vec![0],
        filters: vec![],
        measures: MEASURES.to_vec(),
    };
    let (_, before) = get(&f.app, &q.url()).await;
    compare(&before, &q, &f.evs);
    publish_snapshot(&f.store, &view(), &f.evs, T0 / EPOCH_MS + 40, "run2").await;
    assert_eq!(f.state.refresh().await, 1);
    let (status, after) = get(&f.app, &q.url()).await;
    assert_eq!(status, 200);
    assert_eq!(after["cut"].as_i64(), Some(T0 / EPOCH_MS + 40));
    assert_eq!(after["freshness"]["snapshot_run_id"], "run2");
    compare(&after, &q, &f.evs);
    // Nothing new: no reload.
    assert_eq!(f.state.refresh().await, 0);
}

#[tokio::test]
async fn without_a_manifest_every_speed_slice_counts() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let evs = events(3, 1500);
    write_speed(&redis.url(), "t", &view(), &evs).await;
    let state = AppState::new(
        config(&redis.url(), "t"),
        Arc::new(InMemory::new()),
        ServeOptions::default(),
    )
    .expect("state");
    state.refresh().await;
    let app = router(state);
    let q = Q {
        from: T0,
        to: T0 + SPAN_MS,
        gran: "6h".parse().expect("g"),
        group_by: vec![1],
        filters: vec![],
        measures: MEASURES.to_vec(),
    };
    let (status, body) = get(&app, &q.url()).await;
    assert_eq!(status, 200);
    assert_eq!(body["cut"], serde_json::Value::Null);
    compare(&body, &q, &evs);
}

#[tokio::test]
async fn groups_over_the_limit_are_cut_to_the_largest_and_totals_keep_all() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let evs = events(5, 2000);
    write_speed(&redis.url(), "t", &view(), &evs).await;
    let mut cfg = config(&redis.url(), "t");
    cfg.serve.max_groups = 2;
    let state =
        AppState::new(cfg, Arc::new(InMemory::new()), ServeOptions::default()).expect("state");
    let app = router(state);
    let q = Q {
        from: T0,
        to: T0 + SPAN_MS,
        gran: Granularity::DAY,
        group_by: vec![0],
        filters: vec![],
        measures: vec!["views"],
    };
    let (status, body) = get(&app, &q.url()).await;
    assert_eq!(status, 200);
    assert_eq!(body["overflow"], true);
    assert_eq!(body["groups_returned"], 2);
    assert_eq!(body["groups_total"], 6);
    assert_eq!(body["totals"]["views"].as_u64(), Some(evs.len() as u64));
    let truth = q.truth(&evs);
    let mut per_page: BTreeMap<Vec<Option<String>>, u64> = BTreeMap::new();
    for ((_, g), e) in truth {
        *per_page.entry(g).or_default() += e.count;
    }
    let mut counts: Vec<u64> = per_page.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let got: Vec<u64> = body["series"]
        .as_array()
        .expect("s")
        .iter()
        .map(|s| s["totals"]["views"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(got, counts[..2].to_vec());
}

/// Over a Redis Cluster (3 masters, 4 partition groups, the events spread
/// over the groups as the speed layer spreads partitions): the mirror reads
/// every group and merges them, and the answers equal the fold. With a
/// master gone (no replica), a sync fails and answers say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_redis_cluster_answers_equal_the_fold() {
    let mut cluster = tokio::task::spawn_blocking(|| tally_testkit::RedisCluster::start(3, 0))
        .await
        .expect("join")
        .expect("redis cluster");
    let view = view();
    let evs = events(17, 4000);
    let store = Arc::new(InMemory::new());
    let cut = (T0 / EPOCH_MS) + 30;
    publish_snapshot(&store, &view, &evs, cut, "run1").await;
    let (cfg, mut con) = cluster_config(cluster.seeds(), "t", 4).await;
    let layout = cfg.redis.layout();
    for g in 0..4 {
        let part: Vec<Ev> = evs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 4 == g)
            .map(|(_, e)| e.clone())
            .collect();
        write_speed_in(&mut con, &layout.keys(g as u32), &view, &part).await;
    }
    let opts = ServeOptions {
        speed_max_age: std::time::Duration::ZERO,
        ..ServeOptions::default()
    };
    let state = AppState::new(cfg, store.clone(), opts).expect("state");
    assert_eq!(state.refresh().await, 1);
    let app = router(state.clone());
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..30 {
        let q = random_query(&mut rng);
        let (status, body) = get(&app, &q.url()).await;
        assert_eq!(status, 200, "{} -> {body}", q.url());
        assert_eq!(body["degraded"], serde_json::json!([]), "{body}");
        compare(&body, &q, &evs);
    }
    let q = Q {
        from: T0,
        to: T0 + SPAN_MS,
        gran: Granularity::HOUR,
        group_by: vec![0, 1],
        filters: vec![],
        measures: MEASURES.to_vec(),
    };
    let (_, body) = get(&app, &q.url()).await;
    compare(&body, &q, &evs);

    // One master down, no replica to take over: its groups cannot be read.
    let _cluster = tokio::task::spawn_blocking(move || {
        let port = cluster.master_ports().expect("masters")[0];
        cluster.kill(port);
        cluster
    })
    .await
    .expect("join");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // Another query than before: not an answer cached before the kill.
    let q = Q {
        group_by: vec![0],
        ..q
    };
    let (status, body) = get(&app, &q.url()).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["degraded"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "redis")),
        "{body}"
    );
}

/// Percentiles asked explicitly (`quantiles=`), answered from the snapshot
/// alone, from the speed layer alone and from both merged: every point and
/// every group total within 1 % of the exact quantile of the durations.
/// Asked near an end only (p90 and up, or p10 and down: the walks from the
/// top and from the bottom), the same holds.
#[tokio::test]
async fn asked_quantiles_are_within_one_percent_from_either_layer_and_merged() {
    let mixed = [
        (0.0, "0"),
        (0.25, "0.25"),
        (0.5, "0.5"),
        (0.999, "0.999"),
        (1.0, "1"),
    ];
    asked_quantiles_within_one_percent(&mixed, "1.0,0.999,0.50,0.25,0,0.25").await;
    let high = [(0.9, "0.9"), (0.99, "0.99"), (1.0, "1")];
    asked_quantiles_within_one_percent(&high, "0.99,0.9,1").await;
    let low = [(0.0, "0"), (0.01, "0.01"), (0.1, "0.1")];
    asked_quantiles_within_one_percent(&low, "0.1,0,0.01").await;
}

/// `asked` (as answered: ascending, labelled) of the query `quantiles=param`.
async fn asked_quantiles_within_one_percent(asked: &[(f64, &str)], param: &str) {
    let q = Q {
        from: T0,
        to: T0 + SPAN_MS,
        gran: Granularity::HOUR,
        group_by: vec![1],
        filters: vec![],
        measures: vec!["lat"],
    };
    let url = format!("{}&quantiles={param}", q.url());
    // Cut after every epoch (snapshot only), in the middle, before all (speed only).
    for cut_hours in [1_000, 24, -1_000] {
        let f = fixture(13, cut_hours).await;
        let (status, body) = get(&f.app, &url).await;
        assert_eq!(status, 200, "{url} -> {body}");
        let truth = q.truth(&f.evs);
        let mut totals: BTreeMap<Vec<Option<String>>, Expect> = BTreeMap::new();
        for ((_, g), e) in &truth {
            totals.entry(g.clone()).or_default().merge(e);
        }
        let check = |got: &serde_json::Value, want: &Expect, ctx: &str| {
            assert_eq!(
                got.as_object().map(|o| o.len()),
                Some(asked.len()),
                "{ctx}: {got}"
            );
            for &(p, label) in asked {
                let v = &got[label];
                match want.quantile(p) {
                    None => assert!(v.is_null(), "{ctx} {label}: {v}"),
                    Some(exact) => assert!(
                            v.as_f64().is_some_and(
                                |v| (v - exact).abs() <= 0.01 * exact.abs() * (1.0 + 1e-9)
                            ),
                            "{ctx} {label}: {v} vs exact {exact}"
                        ),
                }
            }
        };
        let mut points = 0;
        for s in body["series"].as_array().expect("series") {
            let g = group_of(s, &q);
            for p in s["points"].as_array().expect("points") {
                let t = p["t"].as_i64().expect("t");
                let ctx = format!("cut {cut_hours}h t={t} g={g:?}");
                check(&p["values"]["lat"], &truth[&(t, g.clone())], &ctx);
                points += 1;
            }
            check(
                &s["totals"]["lat"],
                &totals[&g],
                &format!("cut {cut_hours}h totals {g:?}"),
            );
        }
        assert_eq!(
            points,
            truth.values().filter(|e| !e.values.is_empty()).count()
        );
        let mut grand = Expect::default();
        totals.values().for_each(|e| grand.merge(e));
        check(
            &body["totals"]["lat"],
            &grand,
            &format!("cut {cut_hours}h grand total"),
        );
    }
}
