//! What the alert tests share: a local webhook receiver, a rule on the
//! fixture's view, the value the fold says such a rule reads, the published
//! data the rule crosses, and a config.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use tally_core::config::{AlertRule, Comparison, Config, Millis};

use object_store::memory::InMemory;

use super::{config, events, publish_snapshot, view, write_speed, Ev, EPOCH_MS, T0};

pub const MIN: i64 = 60_000;

/// A webhook receiver that answers 500 to its first `fail_first` POSTs,
/// and to every POST while `down` is set.
#[derive(Clone, Default)]
pub struct Receiver {
    pub attempts: Arc<AtomicUsize>,
    /// The ids of the POSTs answered 500.
    pub refused: Arc<Mutex<Vec<String>>>,
    /// The bodies of the POSTs answered 200, in order.
    pub got: Arc<Mutex<Vec<serde_json::Value>>>,
    pub down: Arc<AtomicBool>,
}

impl Receiver {
    pub fn got(&self) -> Vec<serde_json::Value> {
        self.got.lock().expect("lock").clone()
    }

    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().expect("lock").clone()
    }

    /// Wait (at most 20 s) until `n` notifications arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.got.lock().expect("lock").len() < n && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.got()
    }
}

pub async fn receiver(fail_first: usize) -> (Receiver, String) {
    let r = Receiver::default();
    let state = r.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let r = state.clone();
            async move {
                if r.attempts.fetch_add(1, Ordering::SeqCst) < fail_first
                    || r.down.load(Ordering::SeqCst)
                {
                    let id = body["id"].as_str().unwrap_or_default().to_owned();
                    r.refused.lock().expect("lock").push(id);
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                r.got.lock().expect("lock").push(body);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, format!("http://{addr}/hook"))
}

/// `views > threshold` on `/home` over the last 15 minutes.
pub fn rule(name: &str, webhook: &str, threshold: f64, for_ms: Option<i64>) -> AlertRule {
    AlertRule {
        name: name.into(),
        view: "pv".into(),
        measure: "views".into(),
        filter: BTreeMap::from([("properties.page".to_owned(), vec!["/home".to_owned()])]),
        window: Millis(15 * MIN),
        comparison: Comparison::Above,
        threshold,
        for_duration: for_ms.map(Millis),
        webhook: webhook.into(),
    }
}

/// The count [`rule`] reads at `t`, folded from the events.
pub fn truth_at(evs: &[Ev], t: i64) -> u64 {
    let base = |e: &Ev| e.t.div_euclid(MIN) * MIN;
    evs.iter()
        .filter(|e| e.page.as_deref() == Some("/home"))
        .filter(|e| base(e) >= t - 15 * MIN && base(e) < t)
        .count() as u64
}

/// The fixture's events published to both layers (a snapshot cut 24 epochs
/// after `T0`, every event in the speed layer), and instants every 10 minutes
/// for 30 hours, across the cut, with the value the fold says [`rule`] reads
/// at each. The threshold is their median, so the rule crosses it often.
pub struct Crossing {
    pub store: Arc<InMemory>,
    pub evs: Vec<Ev>,
    pub ts: Vec<i64>,
    pub values: Vec<u64>,
    pub threshold: f64,
}

impl Crossing {
    pub async fn publish(redis: &tally_testkit::Redis) -> Crossing {
        let view = view();
        let evs = events(13, 6000);
        let store = Arc::new(InMemory::new());
        publish_snapshot(&store, &view, &evs, T0 / EPOCH_MS + 24, "run1").await;
        write_speed(&redis.url(), "t", &view, &evs).await;
        let ts: Vec<i64> = (0..180).map(|i| T0 + 3_600_000 + i * 10 * MIN).collect();
        let values: Vec<u64> = ts.iter().map(|&t| truth_at(&evs, t)).collect();
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let threshold = sorted[sorted.len() / 2] as f64;
        Crossing {
            store,
            evs,
            ts,
            values,
            threshold,
        }
    }

    /// The instants at which the rule's condition holds.
    pub fn holds(&self) -> Vec<i64> {
        self.instants(true)
    }

    /// The first two instants at which the condition holds.
    pub fn first_two_holding(&self) -> (i64, i64) {
        let holds = self.holds();
        (holds[0], holds[1])
    }

    /// The instants at which it does not.
    pub fn clear(&self) -> Vec<i64> {
        self.instants(false)
    }

    fn instants(&self, above: bool) -> Vec<i64> {
        let out: Vec<i64> = self
            .ts
            .iter()
            .zip(&self.values)
            .filter(|(_, &v)| (v as f64 > self.threshold) == above)
            .map(|(&t, _)| t)
            .collect();
        assert!(out.len() > 3, "the fixture crosses the threshold");
        out
    }
}

/// The fixture's config with `rules`, quick retries, and an interval long
/// enough that only the test evaluates.
pub fn config_with(redis: &str, rules: Vec<AlertRule>) -> Config {
    let mut cfg = config(redis, "t");
    cfg.alerts = rules;
    cfg.alerting.backoff = Millis(20);
    cfg.alerting.max_backoff = Millis(200);
    cfg.alerting.interval = Millis(86_400_000);
    cfg.validate().expect("valid config");
    cfg
}
