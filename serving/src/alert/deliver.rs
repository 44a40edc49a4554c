//! Webhook delivery: the outbox (notifications waiting, in order) and one
//! sender task that POSTs each notification (JSON) with retries and
//! exponential backoff.
//!
//! Guarantees: at least once per notification while the receiver answers
//! 2xx within `alerting.max_attempts` attempts, across restarts of the
//! serving role when Redis keeps the outbox (`persist.rs`): an entry
//! leaves the outbox (and its Redis copy, `XDEL`) only after a 2xx answer
//! or its last attempt, and the sender takes an entry only once the
//! evaluation that made it has tried to write it to Redis, so a notification
//! is not sent before it would survive a crash (unless Redis is down). A
//! receiver may see a notification twice (a crash between its answer and the
//! `XDEL`): it carries an `id` to drop repeats. Notifications go out in the
//! order they were made, one at a time, so a rule's `resolved` never
//! overtakes its `firing`; past `alerting.queue` waiting notifications, new
//! ones are dropped and counted. Every outcome is counted in
//! `tally_alert_deliveries_total` (`delivered`, `retried`, `failed`,
//! `dropped`) and in [`Stats`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_core::config::AlertingConfig;
use tokio::sync::Notify;

use super::notification::Notification;
use super::persist::AlertStore;

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

/// A notification in the outbox.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    /// Unique in this process: how the sender names what it delivered.
    pub(crate) seq: u64,
    /// Its entry in the Redis outbox, once written.
    pub(crate) stream_id: Option<String>,
    /// Not to be sent yet: its evaluation is still writing it to Redis.
    held: bool,
    pub(crate) n: Notification,
}

#[derive(Debug, Default)]
struct Entries {
    items: VecDeque<Queued>,
    next_seq: u64,
    /// Redis entries of notifications done with, still to `XDEL`.
    done: Vec<String>,
}

/// The notifications waiting for delivery, in order.
#[derive(Debug)]
pub struct Outbox {
    entries: Mutex<Entries>,
    ready: Notify,
    capacity: usize,
    stats: Arc<Stats>,
}

impl Outbox {
    /// An outbox of at most `capacity` notifications made here.
    pub fn new(capacity: usize, stats: Arc<Stats>) -> Outbox {
        Outbox {
            entries: Mutex::default(),
            ready: Notify::new(),
            capacity: capacity.max(1),
            stats,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Entries) -> T) -> T {
        let mut e = match self.entries.lock() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        let out = f(&mut e);
        let q = e.items.len() as u64;
        drop(e);
        self.stats.queued.store(q, Ordering::Relaxed);
        metrics::gauge!("tally_alert_queue").set(q as f64);
        out
    }

    /// Queue `n`, held until [`Outbox::release`], or drop it (counted) when
    /// the outbox is full.
    pub fn send(&self, n: Notification) {
        let dropped = self.with(|e| {
            if e.items.len() >= self.capacity {
                return true;
            }
            let seq = e.next_seq;
            e.next_seq += 1;
            e.items.push_back(Queued {
                seq,
                stream_id: None,
                held: true,
                n,
            });
            false
        });
        if dropped {
            tracing::warn!(
                "alert notification dropped: the delivery queue is full (alerting.queue)"
            );
            count(&self.stats, "dropped");
        }
    }

    /// Let the sender take what [`Outbox::send`] held.
    pub(crate) fn release(&self) {
        self.with(|e| e.items.iter_mut().for_each(|q| q.held = false));
        self.ready.notify_one();
    }

    /// The first notification, once it may be sent.
    async fn next(&self) -> Queued {
        loop {
            if let Some(q) = self.with(|e| e.items.front().filter(|q| !q.held).cloned()) {
                return q;
            }
            self.ready.notified().await;
        }
    }

    /// The sender is done with `seq` (delivered or given up): out of the
    /// outbox; its Redis entry, if any, returned for `XDEL`.
    fn finish(&self, seq: u64) -> Option<String> {
        self.with(|e| {
            let at = e.items.iter().position(|q| q.seq == seq)?;
            e.items.remove(at).and_then(|q| q.stream_id)
        })
    }

    /// Redis entries still to delete (taken: give back what failed with
    /// [`Outbox::undone`]).
    pub(crate) fn take_done(&self) -> Vec<String> {
        self.with(|e| std::mem::take(&mut e.done))
    }

    pub(crate) fn undone(&self, ids: Vec<String>) {
        self.with(|e| e.done.extend(ids));
    }

    /// The notifications to write to Redis, in order: those not written
    /// yet, or every one (`all`, when the Redis outbox is rewritten whole).
    pub(crate) fn unwritten(&self, all: bool) -> Vec<(u64, Notification)> {
        self.with(|e| {
            e.items
                .iter()
                .filter(|q| all || q.stream_id.is_none())
                .map(|q| (q.seq, q.n.clone()))
                .collect()
        })
    }

    /// Record where each notification was written; an entry of one
    /// delivered meanwhile is to be deleted.
    pub(crate) fn written(&self, ids: Vec<(u64, String)>) {
        self.with(|e| {
            for (seq, id) in ids {
                match e.items.iter_mut().find(|q| q.seq == seq) {
                    Some(q) => q.stream_id = Some(id),
                    None => e.done.push(id),
                }
            }
        });
    }

    /// Put the notifications read from the Redis outbox (in its order)
    /// before the ones made here, except those already here.
    pub(crate) fn adopt(&self, stored: Vec<(String, Notification)>) {
        let adopted = self.with(|e| {
            let mut front = Vec::new();
            for (id, n) in stored {
                if e.items.iter().any(|q| q.stream_id.as_deref() == Some(&id)) {
                    continue;
                }
                let seq = e.next_seq;
                e.next_seq += 1;
                front.push(Queued {
                    seq,
                    stream_id: Some(id),
                    held: false,
                    n,
                });
            }
            let adopted = front.len();
            for q in front.into_iter().rev() {
                e.items.push_front(q);
            }
            adopted
        });
        if adopted > 0 {
            tracing::info!(
                notifications = adopted,
                "undelivered alert notifications taken over from Redis"
            );
            self.ready.notify_one();
        }
    }

    /// Another process sends what Redis holds: keep only what is not there.
    pub(crate) fn forget_written(&self) {
        self.with(|e| e.items.retain(|q| q.stream_id.is_none()));
    }
}

/// Deliver the outbox's notifications, oldest first, until `stop`
/// resolves; each one's Redis entry is deleted once it is done with.
pub(crate) async fn run(
    outbox: &Outbox,
    store: &AlertStore,
    cfg: AlertingConfig,
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
        let q = tokio::select! {
            q = outbox.next() => q,
            _ = &mut stop => return,
        };
        tokio::select! {
            _ = deliver(&client, &q.n, &cfg, &outbox.stats) => {}
            _ = &mut stop => return,
        }
        if let Some(id) = outbox.finish(q.seq) {
            let mut ids = outbox.take_done();
            ids.push(id);
            if let Err(e) = store.delete(&ids).await {
                tracing::debug!(error = %e, "delivered alert notifications not yet deleted from Redis; retried at the next evaluation");
                outbox.undone(ids);
            }
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
    use crate::alert::notification::NotificationBody;

    fn note(i: u32) -> Notification {
        Notification {
            url: "http://127.0.0.1:9/".into(),
            body: NotificationBody {
                id: format!("a:{i}"),
                episode: "a:0".into(),
                alert: "a".into(),
                status: "firing".into(),
                view: "v".into(),
                measure: "m".into(),
                comparison: ">".into(),
                threshold: 1.0,
                value: Some(2.0),
                window: "5m".into(),
                since_ms: 0,
                at_ms: 0,
            },
        }
    }

    fn ids(outbox: &Outbox) -> Vec<String> {
        outbox
            .unwritten(true)
            .into_iter()
            .map(|(_, n)| n.body.id)
            .collect()
    }

    #[tokio::test]
    async fn a_full_queue_drops_new_notifications_and_counts_them() {
        let stats = Arc::new(Stats::default());
        let outbox = Outbox::new(2, stats.clone());
        for i in 0..5 {
            outbox.send(note(i));
        }
        assert_eq!(stats.queued.load(Ordering::Relaxed), 2);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
        // The first ones stay, in order, and are sent once released.
        assert_eq!(ids(&outbox), ["a:0", "a:1"]);
        outbox.release();
        let first = outbox.next().await;
        assert_eq!(first.n.body.id, "a:0");
        assert_eq!(outbox.finish(first.seq), None);
        assert_eq!(outbox.next().await.n.body.id, "a:1");
    }

    #[tokio::test]
    async fn held_notifications_wait_and_adopted_ones_go_first() {
        let outbox = Outbox::new(10, Arc::new(Stats::default()));
        outbox.send(note(2));
        let held = tokio::time::timeout(Duration::from_millis(50), outbox.next()).await;
        assert!(held.is_err(), "a held notification is not sent");
        // Written to Redis, then taken over entries from Redis go first;
        // one already here is not taken twice.
        let seq = outbox.unwritten(false)[0].0;
        outbox.written(vec![(seq, "5-0".into())]);
        outbox.adopt(vec![
            ("1-0".into(), note(0)),
            ("2-0".into(), note(1)),
            ("5-0".into(), note(2)),
        ]);
        assert_eq!(ids(&outbox), ["a:0", "a:1", "a:2"]);
        assert!(outbox.unwritten(false).is_empty());
        outbox.release();
        let q = outbox.next().await;
        assert_eq!(outbox.finish(q.seq), Some("1-0".into()));
        // Written after it was delivered: its entry is to be deleted.
        outbox.send(note(3));
        let seq = outbox.unwritten(false)[0].0;
        outbox.release();
        let mut sent = Vec::new();
        for _ in 0..3 {
            let q = outbox.next().await;
            sent.push(q.n.body.id.clone());
            outbox.finish(q.seq);
        }
        assert_eq!(sent, ["a:1", "a:2", "a:3"]);
        outbox.written(vec![(seq, "9-0".into())]);
        assert_eq!(outbox.take_done(), ["9-0"]);
        outbox.send(note(4));
        outbox.written(vec![(outbox.unwritten(false)[0].0, "10-0".into())]);
        outbox.send(note(5));
        outbox.forget_written();
        assert_eq!(ids(&outbox), ["a:5"]);
    }
}
