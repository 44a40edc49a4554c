//! Webhook delivery: a bounded queue and one sender task that POSTs each
//! notification (JSON) with retries and exponential backoff.
//!
//! Guarantees: at least once per notification while the server runs and
//! the receiver answers 2xx within `alerting.max_attempts` attempts (a
//! receiver may see a notification twice: it carries an `id` to drop
//! repeats); notifications go out in the order they were made (one at a
//! time, so a rule's `resolved` never overtakes its `firing`); past
//! `alerting.queue` waiting notifications, new ones are dropped and
//! counted. Every outcome is counted in `tally_alert_deliveries_total`
//! (`delivered`, `retried`, `failed`, `dropped`) and in [`Stats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tally_core::config::AlertingConfig;
use tokio::sync::mpsc;

/// One notification: where it goes and what it says.
#[derive(Debug, Clone)]
pub struct Notification {
    pub url: String,
    pub body: NotificationBody,
}

/// The JSON a webhook receives.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NotificationBody {
    /// `<alert>:<status>:<since_ms>`: the same on every retry of this
    /// notification, and after a restart never the id of an earlier one.
    pub id: String,
    pub alert: String,
    /// `firing` or `resolved`.
    pub status: &'static str,
    pub view: String,
    pub measure: String,
    pub comparison: &'static str,
    pub threshold: f64,
    /// The value that fired or resolved the rule (null: no data).
    pub value: Option<f64>,
    pub window: String,
    /// When the comparison started to hold (firing) or the rule fired (resolved), epoch ms.
    pub since_ms: i64,
    /// When the evaluation that made this notification ran, epoch ms.
    pub at_ms: i64,
}

/// Delivery counts since start.
#[derive(Debug, Default)]
pub struct Stats {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub queued: AtomicU64,
}

fn count(stats: &Stats, result: &'static str) {
    let field = match result {
        "delivered" => &stats.delivered,
        "retried" => &stats.retried,
        "failed" => &stats.failed,
        _ => &stats.dropped,
    };
    field.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("tally_alert_deliveries_total", "result" => result).increment(1);
}

/// The sending side of the queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Notification>,
    stats: Arc<Stats>,
}

impl Outbox {
    /// A queue of `capacity` and its receiving end (for [`run`]).
    pub fn new(capacity: usize, stats: Arc<Stats>) -> (Outbox, mpsc::Receiver<Notification>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Outbox { tx, stats }, rx)
    }

    /// Queue `n`, or drop it (counted) when the queue is full.
    pub fn send(&self, n: Notification) {
        match self.tx.try_send(n) {
            Ok(()) => {
                let q = self.stats.queued.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::gauge!("tally_alert_queue").set(q as f64);
            }
            Err(e) => {
                tracing::warn!(error = %e, "alert notification dropped: the delivery queue is full (alerting.queue)");
                count(&self.stats, "dropped");
            }
        }
    }
}

/// Deliver queued notifications until `stop` resolves.
pub async fn run(
    mut rx: mpsc::Receiver<Notification>,
    cfg: AlertingConfig,
    stats: Arc<Stats>,
    stop: impl std::future::Future<Output = ()>,
) {
    let client = match reqwest::Client::builder()
        .timeout(cfg.timeout.as_duration())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client for alert webhooks: notifications are not delivered");
            return;
        }
    };
    tokio::pin!(stop);
    loop {
        let n = tokio::select! {
            n = rx.recv() => match n { Some(n) => n, None => return },
            _ = &mut stop => return,
        };
        let q = stats
            .queued
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        metrics::gauge!("tally_alert_queue").set(q as f64);
        tokio::select! {
            _ = deliver(&client, &n, &cfg, &stats) => {}
            _ = &mut stop => return,
        }
    }
}

/// POST `n` until a 2xx answer or `max_attempts` attempts.
async fn deliver(client: &reqwest::Client, n: &Notification, cfg: &AlertingConfig, stats: &Stats) {
    let mut delay = cfg.backoff.as_duration();
    let cap = cfg.max_backoff.as_duration().max(delay);
    for attempt in 1..=cfg.max_attempts {
        let why = match client.post(&n.url).json(&n.body).send().await {
            Ok(r) if r.status().is_success() => {
                count(stats, "delivered");
                return;
            }
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => e.to_string(),
        };
        if attempt == cfg.max_attempts {
            tracing::warn!(id = %n.body.id, url = %n.url, attempts = attempt, reason = %why, "alert notification not delivered");
            count(stats, "failed");
            return;
        }
        tracing::info!(id = %n.body.id, attempt, reason = %why, retry_in = ?delay, "alert webhook failed; retrying");
        count(stats, "retried");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(cap).max(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(i: u32) -> Notification {
        Notification {
            url: "http://127.0.0.1:9/".into(),
            body: NotificationBody {
                id: format!("a:{i}"),
                alert: "a".into(),
                status: "firing",
                view: "v".into(),
                measure: "m".into(),
                comparison: ">",
                threshold: 1.0,
                value: Some(2.0),
                window: "5m".into(),
                since_ms: 0,
                at_ms: 0,
            },
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_new_notifications_and_counts_them() {
        let stats = Arc::new(Stats::default());
        let (outbox, mut rx) = Outbox::new(2, stats.clone());
        for i in 0..5 {
            outbox.send(note(i));
        }
        assert_eq!(stats.queued.load(Ordering::Relaxed), 2);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
        // The first ones stay, in order.
        assert_eq!(rx.recv().await.map(|n| n.body.id), Some("a:0".into()));
        assert_eq!(rx.recv().await.map(|n| n.body.id), Some("a:1".into()));
    }
}
