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
//!
//! Across restarts (`persist.rs`): every rule's state (phase, since when,
//! the episode) and the notifications not yet delivered are kept in Redis,
//! written by each evaluation before its notifications are sent. A serving
//! process that starts (or takes over from another) adopts the stored
//! state of every rule whose definition is unchanged and sends the stored
//! notifications first, in order, under their own ids: a rule firing before
//! a restart stays firing (no second `firing` for the episode), sends its
//! `resolved` once if the condition cleared meanwhile, and an undelivered
//! notification is delivered after the restart. A rule whose definition
//! changed starts `ok`; a stored rule no longer configured is forgotten
//! (notifications it already made are still delivered).
//!
//! With several serving processes, one evaluates and sends: the holder of
//! a lease in Redis (`persist.rs`); the others show the stored
//! state (`evaluating: false`) and take over when the lease expires or is
//! released at shutdown. When Redis cannot be reached, each process
//! evaluates and delivers in memory as before (`persisted: false` in
//! `GET /api/v1/alerts`; several processes then each send their own
//! notifications), and its state and unwritten notifications are written
//! once Redis answers again.

pub mod deliver;
pub mod notification;
mod persist;
pub mod run;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tally_core::config::{AlertRule, Config};
use tally_core::time::format_ms;
use utoipa::ToSchema;

use deliver::{Outbox, Stats};
use notification::{Notification, NotificationBody};
use persist::{AlertStore, Stored};

use crate::speed::RedisReader;

/// Where a rule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    /// The episode the rule is firing in (`<alert>:<since_ms>`, as in its
    /// notifications).
    pub episode: Option<String>,
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
    /// Whether the states and waiting notifications are in Redis, so that
    /// they survive a restart (false while Redis cannot be reached: they
    /// live in this process only, and are written when it answers again).
    pub persisted: bool,
    /// Whether this process evaluates the rules and sends (it holds the
    /// lease, or Redis cannot be reached); false: another process does, and
    /// the states shown are the ones it stored.
    pub evaluating: bool,
    /// Why the state could not be read or written in Redis.
    pub persist_error: Option<String>,
}

/// What this process knows of the stored state, for the API.
#[derive(Debug, Clone)]
struct Persistence {
    persisted: bool,
    evaluating: bool,
    error: Option<String>,
}

/// What one evaluation step carries over to the next ([`run`]).
#[derive(Debug, Default)]
pub(crate) struct StepFlags {
    /// States were changed here without being written (Redis away): on
    /// taking the lease they win over the stored ones.
    pub(crate) fresh: bool,
    /// The stored outbox is to be replaced by this process's.
    pub(crate) rewrite: bool,
    /// Stored rules to forget.
    pub(crate) forget: Vec<String>,
}

/// The rules, their states, the outbox and their copy in Redis.
#[derive(Debug)]
pub struct Alerts {
    rules: Vec<AlertRule>,
    /// Each rule's fingerprint (`persist.rs`).
    fps: Vec<String>,
    states: Mutex<Vec<AlertStatus>>,
    pub(crate) outbox: Outbox,
    pub(crate) store: AlertStore,
    /// Held by one evaluation step at a time.
    pub(crate) step: tokio::sync::Mutex<StepFlags>,
    persistence: Mutex<Persistence>,
    /// Set when the loop starts: it runs once.
    started: AtomicBool,
    stats: Arc<Stats>,
}

impl Alerts {
    pub(crate) fn new(cfg: &Config, redis: RedisReader) -> Alerts {
        let stats = Arc::new(Stats::default());
        let outbox = Outbox::new(cfg.alerting.queue, stats.clone());
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
                episode: None,
                last_eval_ms: None,
                last_error: None,
                degraded: Vec::new(),
                notifications: 0,
            })
            .collect();
        Alerts {
            fps: cfg.alerts.iter().map(persist::fingerprint).collect(),
            rules: cfg.alerts.clone(),
            states: Mutex::new(states),
            outbox,
            store: AlertStore::new(redis, cfg.alerting.interval.as_duration()),
            step: tokio::sync::Mutex::default(),
            persistence: Mutex::new(Persistence {
                persisted: false,
                evaluating: true,
                error: None,
            }),
            started: AtomicBool::new(false),
            stats,
        }
    }

    pub fn rules(&self) -> &[AlertRule] {
        &self.rules
    }

    /// True the first time only: the loop runs once.
    pub(crate) fn start(&self) -> bool {
        !self.started.swap(true, Ordering::SeqCst)
    }

    fn with_states<T>(&self, f: impl FnOnce(&mut Vec<AlertStatus>) -> T) -> T {
        match self.states.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub(crate) fn set_persistence(&self, persisted: bool, evaluating: bool, error: Option<String>) {
        if let Ok(mut p) = self.persistence.lock() {
            *p = Persistence {
                persisted,
                evaluating,
                error,
            };
        }
    }

    /// Every rule's state as stored, by name.
    pub(crate) fn stored(&self) -> Vec<(String, Stored)> {
        self.with_states(|states| {
            states
                .iter()
                .zip(&self.fps)
                .map(|(st, fp)| {
                    let stored = Stored {
                        fp: fp.clone(),
                        phase: st.state,
                        since_ms: st.since_ms,
                        fired_ms: st.fired_ms,
                        episode: st.episode.clone(),
                        value: st.value,
                        last_eval_ms: st.last_eval_ms,
                        notifications: st.notifications,
                    };
                    (st.name.clone(), stored)
                })
                .collect()
        })
    }

    /// Take the stored state of every rule whose definition is unchanged
    /// (`phases`: its phase too; else only what the API shows). Returns the
    /// stored rules that are no longer configured.
    fn adopt_states(&self, stored: &HashMap<String, Stored>, phases: bool) -> Vec<String> {
        self.with_states(|states| {
            for (st, fp) in states.iter_mut().zip(&self.fps) {
                let Some(s) = stored.get(&st.name).filter(|s| &s.fp == fp) else {
                    continue;
                };
                if phases {
                    st.state = s.phase;
                    st.since_ms = s.since_ms;
                    st.fired_ms = s.fired_ms;
                    st.episode = s.episode.clone();
                    metrics::gauge!("tally_alert_firing", "alert" => st.name.clone())
                        .set(if st.state == Phase::Firing { 1.0 } else { 0.0 });
                }
                st.value = s.value;
                st.last_eval_ms = s.last_eval_ms;
                st.notifications = s.notifications;
            }
            stored
                .keys()
                .filter(|name| !states.iter().any(|st| &st.name == *name))
                .cloned()
                .collect()
        })
    }

    /// The lease was just taken: adopt the stored states (unless `keep`:
    /// this process's are newer) and the stored outbox. Returns the stored
    /// rules to forget.
    pub(crate) fn take_over(
        &self,
        stored: &HashMap<String, Stored>,
        outbox: Vec<(String, Notification)>,
        keep: bool,
    ) -> Vec<String> {
        let forget = self.adopt_states(stored, !keep);
        tracing::info!(
            rules = self.rules.len(),
            stored = stored.len(),
            waiting = outbox.len(),
            "alert lease taken: evaluating the rules and sending their notifications"
        );
        self.outbox.adopt(outbox);
        forget
    }

    /// Another process evaluates: show what it stored, and leave it the
    /// notifications Redis holds.
    pub(crate) fn stand_by(&self, stored: &HashMap<String, Stored>) {
        self.adopt_states(stored, true);
        self.outbox.forget_written();
    }

    /// Every rule's state and the delivery counts.
    pub fn status(&self) -> AlertsResponse {
        use std::sync::atomic::Ordering::Relaxed;
        let alerts = self.with_states(|s| s.clone());
        let p = self
            .persistence
            .lock()
            .map(|p| p.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        let s = &self.stats;
        AlertsResponse {
            alerts,
            queued: s.queued.load(Relaxed),
            delivered: s.delivered.load(Relaxed),
            retried: s.retried.load(Relaxed),
            failed: s.failed.load(Relaxed),
            dropped: s.dropped.load(Relaxed),
            persisted: p.persisted,
            evaluating: p.evaluating,
            persist_error: p.error,
        }
    }

    /// Record rule `i`'s evaluation at `now` (`value`, or why it failed)
    /// and queue the notification it makes, if any (held until the step
    /// wrote it to Redis, [`Outbox::release`]).
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
                let episode = st.episode.take();
                st.state = Phase::Ok;
                st.since_ms = None;
                let episode = episode.unwrap_or_else(|| format!("{}:{since}", rule.name));
                Some(("resolved", since, episode))
            }
            (_, false) => {
                st.state = Phase::Ok;
                st.since_ms = None;
                None
            }
            (_, true) => {
                let since = *st.since_ms.get_or_insert(now);
                if now - since >= wait {
                    let episode = format!("{}:{since}", rule.name);
                    st.state = Phase::Firing;
                    st.fired_ms = Some(now);
                    st.episode = Some(episode.clone());
                    Some(("firing", since, episode))
                } else {
                    st.state = Phase::Pending;
                    None
                }
            }
        };
        metrics::gauge!("tally_alert_firing", "alert" => rule.name.clone())
            .set(if st.state == Phase::Firing { 1.0 } else { 0.0 });
        let Some((status, since_ms, episode)) = status else {
            return;
        };
        st.notifications += 1;
        let body = NotificationBody {
            id: format!("{}:{status}:{since_ms}", rule.name),
            episode,
            alert: rule.name.clone(),
            status: status.to_owned(),
            view: rule.view.clone(),
            measure: rule.measure.clone(),
            comparison: rule.comparison.as_str().to_owned(),
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
