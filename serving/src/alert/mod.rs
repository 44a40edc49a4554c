//! Threshold alerts (`[[alert]]`): evaluated by the serving role every
//! `alerting.interval`, through the query API's own path, with firing and
//! resolving webhooks ([`deliver`]); [`run`] evaluates the rules and runs
//! the loop.
//!
//! A rule's value at instant `now` is the total of its measure over the base
//! buckets starting in `[now - window, now)`, filtered as the rule says: the
//! answer `GET /api/v1/views/{view}/query?from=now-window&to=now&measures=…&filter=…`
//! gives (snapshot ⊕ speed, lookups applied). A rule is `ok`, `pending`
//! (the comparison holds, for less than `for`) or `firing`:
//!
//! - `ok`/`pending` → `firing` once the comparison has held for `for` (at
//!   the first evaluation where it holds, without `for`): a `firing`
//!   notification;
//! - `firing` → `ok` at the first evaluation where it does not hold: a
//!   `resolved` notification; `pending` → `ok` sends nothing.
//!
//! A value without data (a min or max over no events) does not hold. An
//! evaluation that fails (a bad answer) keeps the rule's state and shows
//! the error; a degraded answer is evaluated, and says so.

pub mod deliver;
pub mod run;

use std::sync::{Arc, Mutex};

use serde::Serialize;
use tally_core::config::{AlertRule, Config};
use tally_core::time::format_ms;
use utoipa::ToSchema;

use deliver::{Notification, NotificationBody, Outbox, Stats};

/// Where a rule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Ok,
    Pending,
    Firing,
}

/// A rule's state as `GET /api/v1/alerts` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlertStatus {
    pub name: String,
    pub view: String,
    pub measure: String,
    pub comparison: String,
    pub threshold: f64,
    pub window: String,
    #[serde(rename = "for")]
    pub for_duration: Option<String>,
    pub state: Phase,
    /// The last value evaluated (null: no data, or never evaluated).
    pub value: Option<f64>,
    /// Since when the comparison holds (pending or firing), epoch ms.
    pub since_ms: Option<i64>,
    /// When the rule last fired, epoch ms.
    pub fired_ms: Option<i64>,
    pub last_eval_ms: Option<i64>,
    /// Why the last evaluation failed.
    pub last_error: Option<String>,
    /// What the last answer said was down (`degraded`).
    pub degraded: Vec<String>,
    /// Notifications made for this rule.
    pub notifications: u64,
}

/// `GET /api/v1/alerts`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlertsResponse {
    pub alerts: Vec<AlertStatus>,
    /// Notifications waiting for delivery.
    pub queued: u64,
    pub delivered: u64,
    /// Failed attempts that were retried.
    pub retried: u64,
    /// Notifications given up after `alerting.max_attempts`.
    pub failed: u64,
    /// Notifications dropped because the queue was full.
    pub dropped: u64,
}

/// The rules, their states and the delivery queue.
#[derive(Debug)]
pub struct Alerts {
    rules: Vec<AlertRule>,
    states: Mutex<Vec<AlertStatus>>,
    outbox: Outbox,
    /// Taken by the delivery task when it starts.
    inbox: Mutex<Option<tokio::sync::mpsc::Receiver<Notification>>>,
    stats: Arc<Stats>,
}

impl Alerts {
    pub fn new(cfg: &Config) -> Alerts {
        let stats = Arc::new(Stats::default());
        let (outbox, inbox) = Outbox::new(cfg.alerting.queue, stats.clone());
        let states = cfg
            .alerts
            .iter()
            .map(|r| AlertStatus {
                name: r.name.clone(),
                view: r.view.clone(),
                measure: r.measure.clone(),
                comparison: r.comparison.as_str().to_owned(),
                threshold: r.threshold,
                window: format_ms(r.window.0),
                for_duration: r.for_duration.map(|f| format_ms(f.0)),
                state: Phase::Ok,
                value: None,
                since_ms: None,
                fired_ms: None,
                last_eval_ms: None,
                last_error: None,
                degraded: Vec::new(),
                notifications: 0,
            })
            .collect();
        Alerts {
            rules: cfg.alerts.clone(),
            states: Mutex::new(states),
            outbox,
            inbox: Mutex::new(Some(inbox)),
            stats,
        }
    }

    pub fn rules(&self) -> &[AlertRule] {
        &self.rules
    }

    /// The receiving end of the queue, once.
    pub(crate) fn take_inbox(&self) -> Option<tokio::sync::mpsc::Receiver<Notification>> {
        self.inbox.lock().ok()?.take()
    }

    pub(crate) fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Every rule's state and the delivery counts.
    pub fn status(&self) -> AlertsResponse {
        use std::sync::atomic::Ordering::Relaxed;
        let alerts = self.states.lock().map(|s| s.clone()).unwrap_or_default();
        let s = &self.stats;
        AlertsResponse {
            alerts,
            queued: s.queued.load(Relaxed),
            delivered: s.delivered.load(Relaxed),
            retried: s.retried.load(Relaxed),
            failed: s.failed.load(Relaxed),
            dropped: s.dropped.load(Relaxed),
        }
    }

    /// Record rule `i`'s evaluation at `now` (`value`, or why it failed)
    /// and queue the notification it makes, if any.
    pub(crate) fn record(
        &self,
        i: usize,
        now: i64,
        outcome: Result<(Option<f64>, Vec<String>), String>,
    ) {
        let Some(rule) = self.rules.get(i) else {
            return;
        };
        let Ok(mut states) = self.states.lock() else {
            return;
        };
        let Some(st) = states.get_mut(i) else {
            return;
        };
        st.last_eval_ms = Some(now);
        let (value, degraded) = match outcome {
            Ok(v) => v,
            Err(e) => {
                st.last_error = Some(e);
                return;
            }
        };
        st.last_error = None;
        st.value = value;
        st.degraded = degraded;
        let holds = value.is_some_and(|v| rule.comparison.holds(v, rule.threshold));
        let wait = rule.for_duration.map_or(0, |f| f.0);
        let status = match (st.state, holds) {
            (Phase::Firing, true) => None,
            (Phase::Firing, false) => {
                let since = st.fired_ms.unwrap_or(now);
                st.state = Phase::Ok;
                st.since_ms = None;
                Some(("resolved", since))
            }
            (_, false) => {
                st.state = Phase::Ok;
                st.since_ms = None;
                None
            }
            (_, true) => {
                let since = *st.since_ms.get_or_insert(now);
                if now - since >= wait {
                    st.state = Phase::Firing;
                    st.fired_ms = Some(now);
                    Some(("firing", since))
                } else {
                    st.state = Phase::Pending;
                    None
                }
            }
        };
        metrics::gauge!("tally_alert_firing", "alert" => rule.name.clone())
            .set(if st.state == Phase::Firing { 1.0 } else { 0.0 });
        let Some((status, since_ms)) = status else {
            return;
        };
        st.notifications += 1;
        let body = NotificationBody {
            id: format!("{}:{status}:{since_ms}", rule.name),
            alert: rule.name.clone(),
            status,
            view: rule.view.clone(),
            measure: rule.measure.clone(),
            comparison: rule.comparison.as_str(),
            threshold: rule.threshold,
            value,
            window: format_ms(rule.window.0),
            since_ms,
            at_ms: now,
        };
        tracing::info!(alert = %rule.name, status, value = ?value, "alert {status}");
        drop(states);
        self.outbox.send(Notification {
            url: rule.webhook.clone(),
            body,
        });
    }
}
