//! Rolling windows (`window=`): every point equals the fold of the events
//! whose base bucket lies in its trailing window, across both layers, the
//! merge and the roll-up levels; totals equal the fold over every base
//! bucket the points read; a bad window is a 400 naming `window`.
//!
//! The truth is folded from the events here, with the window applied by
//! the test: never by the code under test.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use object_store::memory::InMemory;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_core::time::Granularity;
use tally_serving::{router, AppState, ServeOptions};

const MIN: i64 = 60_000;

/// The truth of `q` with a window of `w` ms: the points (shown ones only),
/// the group totals and the grand total over the read range.
type Truth = (
    BTreeMap<(i64, Vec<Option<String>>), Expect>,
    BTreeMap<Vec<Option<String>>, Expect>,
    Expect,
);

fn window_truth(q: &Q, w: i64, evs: &[Ev]) -> Truth {
    let g = q.gran.as_ms();
    let ceil = |t: i64| -((-t).div_euclid(MIN) * MIN);
    let (from, to) = (ceil(q.from), ceil(q.to));
    let (first, last) = (q.gran.bucket(from), q.gran.bucket(to - 1));
    let read_from = first + g - w;
    // Buckets of the granularity over the whole read range.
    let cells = Q {
        from: read_from,
        to,
        ..q.clone()
    }
    .truth(evs);
    let mut groups: BTreeMap<Vec<Option<String>>, Vec<(i64, &Expect)>> = BTreeMap::new();
    for ((t, grp), e) in &cells {
        groups.entry(grp.clone()).or_default().push((*t, e));
    }
    let mut points = BTreeMap::new();
    let mut totals = BTreeMap::new();
    let mut grand = Expect::default();
    for (grp, cs) in groups {
        let mut t = first;
        let mut any = false;
        while t <= last {
            let mut e = Expect::default();
            for (c, x) in &cs {
                if *c > t - w && *c <= t {
                    e.merge(x);
                }
            }
            if shown(q, &e) {
                points.insert((t, grp.clone()), e);
                any = true;
            }
            t += g;
        }
        if any {
            let mut total = Expect::default();
            for (_, x) in &cs {
                total.merge(x);
            }
            grand.merge(&total);
            totals.insert(grp, total);
        }
    }
    (points, totals, grand)
}

async fn fixture(redis: &tally_testkit::Redis, evs: &[Ev]) -> axum::Router {
    let view = view();
    let store = Arc::new(InMemory::new());
    publish_snapshot(&store, &view, evs, T0 / EPOCH_MS + 30, "run1").await;
    write_speed(&redis.url(), "t", &view, evs).await;
    let state =
        AppState::new(config(&redis.url(), "t"), store, ServeOptions::default()).expect("state");
    assert_eq!(state.refresh().await, 1);
    router(state)
}

#[tokio::test]
async fn windowed_points_equal_the_fold_of_their_windows() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let evs = events(23, 4000);
    let app = fixture(&redis, &evs).await;
    let mut rng = StdRng::seed_from_u64(41);
    let mut checked_points = 0;
    for i in 0..50 {
        let mut q = random_query(&mut rng);
        // Keep the answers under max_cells: narrower ranges at fine grains.
        if q.gran.as_ms() < 3_600_000 {
            q.to = q.to.min(q.from + 12 * 3_600_000);
        }
        let n = [1, 2, 3, 15, 24][rng.gen_range(0..5)];
        let w = q.gran.as_ms() * n;
        let url = format!("{}&window={}", q.url(), tally_core::time::format_ms(w));
        let (status, body) = get(&app, &url).await;
        assert_eq!(status, 200, "{url} -> {body}");
        assert_eq!(body["window"], tally_core::time::format_ms(w), "{url}");
        let (points, totals, grand) = window_truth(&q, w, &evs);
        compare_to(&body, &q, &points, &totals, &grand);
        checked_points += points.len();
        // A one-bucket window is the plain query's points.
        if n == 1 && i % 2 == 0 {
            let (_, plain) = get(&app, &q.url()).await;
            compare(&plain, &q, &evs);
        }
    }
    assert!(checked_points > 1000, "{checked_points} points checked");

    // 15 minutes by minute over a range whose first windows reach back
    // before `from` into buckets of both layers.
    let q = Q {
        from: T0 + 29 * 3_600_000 + 7 * MIN + 30_000,
        to: T0 + 31 * 3_600_000,
        gran: Granularity::MINUTE,
        group_by: vec![0],
        filters: vec![(1, "de".into())],
        measures: MEASURES.to_vec(),
    };
    let (status, body) = get(&app, &format!("{}&window=15m", q.url())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["read_from_ms"].as_i64(),
        Some(T0 + 29 * 3_600_000 + 8 * MIN + MIN - 15 * MIN)
    );
    let (points, totals, grand) = window_truth(&q, 15 * MIN, &evs);
    compare_to(&body, &q, &points, &totals, &grand);
}

#[tokio::test]
async fn bad_windows_are_400_naming_the_parameter() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let app = fixture(&redis, &events(1, 100)).await;
    let base = format!("/api/v1/views/pv/query?from={T0}&to={}", T0 + 3_600_000);
    for (q, why) in [
        ("&granularity=5m&window=7m", "not a multiple"),
        ("&window=2d", "over 1440 buckets"),
        ("&window=0m", "zero"),
        ("&window=soon", "not a duration"),
        ("&window=5m&window=5m", "twice"),
    ] {
        let (status, body) = get(&app, &format!("{base}{q}")).await;
        assert_eq!(status, 400, "{why}: {body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains("`window`"),
            "{why}: {body}"
        );
    }
    // The lead-in counts against max_buckets.
    let (status, body) = get(
        &app,
        &format!(
            "/api/v1/views/pv/query?from={T0}&to={}&granularity=1m&window=1d",
            T0 + 9_000 * MIN
        ),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "too_many_buckets");
}
