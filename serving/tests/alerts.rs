//! Threshold alerts: evaluated at chosen instants over both layers, a rule
//! fires when the fold of the events says its threshold is crossed and
//! resolves when it is not; `for` delays firing; the webhook receiver (an
//! axum server here) fails the first deliveries and still gets every
//! notification, in order; `GET /api/v1/alerts` shows the states; the
//! serving role's own loop evaluates on its interval.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::alerting::*;
use common::*;
use object_store::memory::InMemory;
use tally_core::config::{Comparison, Millis};
use tally_serving::{router, AppState, ServeOptions};

/// The notifications (status, at) a rule makes over `values` at instants
/// `ts`, per the rule's contract.
fn expected(ts: &[i64], values: &[u64], threshold: f64, for_ms: i64) -> Vec<(String, i64)> {
    let (mut firing, mut since) = (false, None);
    let mut out = Vec::new();
    for (&t, &v) in ts.iter().zip(values) {
        let holds = v as f64 > threshold;
        if !holds {
            if firing {
                out.push(("resolved".to_owned(), t));
            }
            firing = false;
            since = None;
        } else if !firing {
            let s = *since.get_or_insert(t);
            if t - s >= for_ms {
                firing = true;
                out.push(("firing".to_owned(), t));
            }
        }
    }
    out
}

#[tokio::test]
async fn rules_fire_and_resolve_as_the_fold_says_and_every_notification_arrives() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let Crossing {
        store,
        evs,
        ts,
        values,
        threshold,
    } = Crossing::publish(&redis).await;
    let plain = expected(&ts, &values, threshold, 0);
    let delayed = expected(&ts, &values, threshold, 20 * MIN);
    assert!(
        plain.len() >= 10,
        "the fixture crosses the threshold often: {plain:?}"
    );
    assert!(
        !delayed.is_empty() && delayed.len() < plain.len(),
        "{delayed:?}"
    );

    let fail_first = 3;
    let (recv, url) = receiver(fail_first).await;
    let cfg = config_with(
        &redis.url(),
        vec![
            rule("home", &url, threshold, None),
            rule("home_for", &url, threshold, Some(20 * MIN)),
        ],
    );
    let state = AppState::new(cfg, store, ServeOptions::default()).expect("state");
    assert_eq!(state.refresh().await, 1);
    let _loops = tally_serving::spawn_loops(&state);
    let app = router(state.clone());
    for &t in &ts {
        tally_serving::alert::run::evaluate(&state, t).await;
    }

    let want = plain.len() + delayed.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while recv.got.lock().expect("lock").len() < want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = recv.got.lock().expect("lock").clone();
    assert_eq!(got.len(), want, "every notification arrives once: {got:?}");
    assert_eq!(recv.attempts.load(Ordering::SeqCst), want + fail_first);
    let ids: BTreeSet<&str> = got.iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(ids.len(), want, "ids are unique");
    for (name, exp) in [("home", &plain), ("home_for", &delayed)] {
        let mine: Vec<&serde_json::Value> = got.iter().filter(|n| n["alert"] == name).collect();
        let seen: Vec<(String, i64)> = mine
            .iter()
            .map(|n| {
                (
                    n["status"].as_str().unwrap_or_default().to_owned(),
                    n["at_ms"].as_i64().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(&seen, exp, "{name}");
        for n in mine {
            let at = n["at_ms"].as_i64().unwrap_or_default();
            assert_eq!(n["value"].as_f64(), Some(truth_at(&evs, at) as f64), "{n}");
            assert_eq!(n["threshold"].as_f64(), Some(threshold));
        }
    }

    // The states after the last instant.
    let (status, body) = get(&app, "/api/v1/alerts").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"].as_u64(), Some(want as u64));
    assert_eq!(body["retried"].as_u64(), Some(fail_first as u64));
    assert_eq!(body["failed"], 0);
    assert_eq!(body["queued"], 0);
    assert_eq!(body["persisted"], true, "{body}");
    assert_eq!(body["evaluating"], true, "{body}");
    let last = *values.last().unwrap_or(&0);
    for a in body["alerts"].as_array().expect("alerts") {
        assert_eq!(a["value"].as_f64(), Some(last as f64), "{a}");
        assert_eq!(a["last_eval_ms"].as_i64(), ts.last().copied(), "{a}");
        let exp = if a["name"] == "home" {
            &plain
        } else {
            &delayed
        };
        let firing = exp.last().is_some_and(|(s, _)| s == "firing");
        if firing {
            assert_eq!(a["state"], "firing", "{a}");
        } else {
            assert_ne!(a["state"], "firing", "{a}");
        }
    }
}

#[tokio::test]
async fn the_serving_loop_evaluates_on_its_interval_and_the_page_shows_alerts() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let (recv, url) = receiver(1).await;
    // Nothing happened in the last 15 minutes: `views < 1` holds at once.
    let mut r = rule("quiet", &url, 1.0, None);
    r.comparison = Comparison::Below;
    let mut cfg = config_with(&redis.url(), vec![r]);
    cfg.alerting.interval = Millis(200);
    let (addr, stop, server) =
        start_server(cfg, Arc::new(InMemory::new()), ServeOptions::default()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while recv.got.lock().expect("lock").is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = recv.got.lock().expect("lock").clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["status"], "firing");
    assert_eq!(got[0]["value"].as_f64(), Some(0.0));
    let client = reqwest::Client::new();
    let body: serde_json::Value = client
        .get(format!("http://{addr}/api/v1/alerts"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(body["alerts"][0]["state"], "firing", "{body}");
    let page = client
        .get(format!("http://{addr}/"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    assert!(page.contains("/api/v1/alerts"));
    let _ = stop.send(());
    server.await.expect("join").expect("serve");
}
