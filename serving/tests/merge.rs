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
use rand::{Rng, SeedableRng};
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

fn random_query(rng: &mut StdRng) -> Q {
    let grans = ["1m", "5m", "15m", "1h", "6h", "1d"];
    let gran: Granularity = grans[rng.gen_range(0..grans.len())].parse().expect("gran");
    // Unaligned bounds too: base buckets starting in [from, to) count.
    let from = T0 - 3_600_000 + rng.gen_range(0..SPAN_MS);
    let to = from + rng.gen_range(1..SPAN_MS);
    let group_by = match rng.gen_range(0..4) {
        0 => vec![],
        1 => vec![0],
        2 => vec![1],
        _ => vec![1, 0],
    };
    let mut filters = Vec::new();
    for _ in 0..rng.gen_range(0..3) {
        if rng.gen_bool(0.5) {
            filters.push((0, PAGES[rng.gen_range(0..PAGES.len())].to_owned()));
        } else {
            filters.push((1, COUNTRIES[rng.gen_range(0..COUNTRIES.len())].to_owned()));
        }
    }
    let mut measures: Vec<&'static str> = MEASURES
        .iter()
        .copied()
        .filter(|_| rng.gen_bool(0.6))
        .collect();
    if measures.is_empty() {
        measures.push("views");
    }
    Q {
        from,
        to,
        gran,
        group_by,
        filters,
        measures,
    }
}

fn group_of(series: &serde_json::Value, q: &Q) -> Vec<Option<String>> {
    q.group_by
        .iter()
        .map(|&d| series["group"][DIMS[d]].as_str().map(str::to_owned))
        .collect()
}

/// Compare a response with the truth: every point, every group total, the grand total.
fn compare(body: &serde_json::Value, q: &Q, evs: &[Ev]) {
    // A bucket is shown when a requested measure is not its identity.
    let shown = |e: &Expect| {
        q.measures.iter().any(|m| match *m {
            "views" => e.count > 0,
            "dur" => e.sum_int != 0 || e.sum_float != 0.0,
            "longest" => e.max.is_some(),
            "shortest" => e.min.is_some(),
            _ => !e.users.is_empty(),
        })
    };
    let truth: BTreeMap<_, _> = q.truth(evs).into_iter().filter(|(_, e)| shown(e)).collect();
    let ctx = q.url();
    assert_eq!(body["degraded"], serde_json::json!([]), "{ctx}");
    let mut seen = HashSet::new();
    let mut group_totals: BTreeMap<Vec<Option<String>>, Expect> = BTreeMap::new();
    let mut grand = Expect::default();
    for (k, e) in &truth {
        group_totals.entry(k.1.clone()).or_default().merge(e);
        grand.merge(e);
    }
    let series = body["series"].as_array().expect("series");
    assert_eq!(
        body["groups_total"].as_u64(),
        Some(group_totals.len() as u64),
        "{ctx}"
    );
    assert_eq!(series.len(), group_totals.len(), "{ctx}");
    for s in series {
        let g = group_of(s, q);
        for p in s["points"].as_array().expect("points") {
            let t = p["t"].as_i64().expect("t");
            let want = truth
                .get(&(t, g.clone()))
                .unwrap_or_else(|| panic!("{ctx}: unexpected point {t} {g:?}"));
            assert!(seen.insert((t, g.clone())), "{ctx}: duplicate point");
            for m in &q.measures {
                check_value(m, &p["values"][*m], want, &format!("{ctx} t={t} g={g:?}"));
            }
        }
        for m in &q.measures {
            check_value(
                m,
                &s["totals"][*m],
                &group_totals[&g],
                &format!("{ctx} totals g={g:?}"),
            );
        }
    }
    assert_eq!(seen.len(), truth.len(), "{ctx}: missing points");
    for m in &q.measures {
        if truth.is_empty() {
            continue;
        }
        check_value(
            m,
            &body["totals"][*m],
            &grand,
            &format!("{ctx} grand total"),
        );
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
