//! Evaluating the alert rules: each rule's value read through the query
//! API's own path ([`crate::query::execute`]), and the loop that does it
//! every `alerting.interval` beside the webhook delivery task.
//!
//! Each evaluation is one step: take or renew the lease (adopting the
//! stored state when just taken, standing by when another process holds
//! it), evaluate every rule, write the states and the new notifications to
//! Redis (`persist.rs`), and only then let the sender take them.
//! Without Redis the step evaluates in memory and releases the
//! notifications at once.

use tally_core::config::AlertRule;

use super::persist::{Lease, Write};
use crate::query::execute::execute;
use crate::query::Query;
use crate::state::{now_ms, AppState};

/// The alert loop (a first step that takes over the stored state at once,
/// the first evaluation one interval after start) and the webhook delivery
/// task, until [`AppState::stop`]; the lease is released on the way out.
/// Nothing without rules.
pub(crate) fn spawn(state: &AppState) -> tokio::task::JoinHandle<()> {
    let state = state.clone();
    tokio::spawn(async move {
        let alerts = &state.inner.alerts;
        if alerts.rules().is_empty() || !alerts.start() {
            return;
        }
        let cfg = state.inner.cfg.alerting.clone();
        let period = cfg.interval.as_duration();
        step(&state, now_ms(), false).await;
        let sender = state.clone();
        let stop = state.until_stopped();
        let delivery = tokio::spawn(async move {
            let a = &sender.inner.alerts;
            super::deliver::run(&a.outbox, &a.store, cfg, stop).await;
        });
        let stop = state.until_stopped();
        tokio::pin!(stop);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => evaluate(&state, now_ms()).await,
                _ = &mut stop => break,
            }
        }
        let _ = delivery.await;
        if let Err(e) = alerts.store.release().await {
            tracing::debug!(error = %e, "alert lease not released; it expires");
        }
    })
}

/// Evaluate every rule at `now` through the query path, one after another,
/// if this process evaluates (see the module documentation).
pub async fn evaluate(state: &AppState, now: i64) {
    step(state, now, true).await;
}

/// One step: the lease, the evaluation (if `evaluate`), the write.
async fn step(state: &AppState, now: i64, evaluate: bool) {
    let alerts = &state.inner.alerts;
    let mut flags = alerts.step.lock().await;
    let done = alerts.outbox.take_done();
    let leased = match alerts.store.acquire(&done).await {
        Err(e) => {
            tracing::warn!(error = %e, "alert state not read from Redis; evaluating in memory");
            alerts.outbox.undone(done);
            alerts.set_persistence(false, true, Some(e.to_string()));
            false
        }
        Ok(a) => match a.lease {
            Lease::Other => {
                alerts.stand_by(&a.states);
                flags.fresh = false;
                alerts.set_persistence(true, false, None);
                return;
            }
            Lease::Taken => {
                flags.forget = alerts.take_over(&a.states, a.outbox, flags.fresh);
                flags.rewrite = true;
                true
            }
            Lease::Renewed => true,
        },
    };
    if evaluate {
        for (i, rule) in alerts.rules().iter().enumerate() {
            let outcome = value_of(state, rule, now).await;
            alerts.record(i, now, outcome);
        }
    }
    if leased {
        let unwritten = alerts.outbox.unwritten(flags.rewrite);
        let w = Write {
            states: alerts.stored(),
            forget: flags.forget.clone(),
            done: alerts.outbox.take_done(),
            rewrite: flags.rewrite,
            append: unwritten.iter().map(|(_, n)| n.clone()).collect(),
        };
        match alerts.store.persist(&w).await {
            Ok(Some(ids)) => {
                let seqs = unwritten.iter().map(|(seq, _)| *seq);
                alerts.outbox.written(seqs.zip(ids).collect());
                flags.fresh = false;
                flags.rewrite = false;
                flags.forget.clear();
                alerts.set_persistence(true, true, None);
            }
            Ok(None) => {
                // Taken over meanwhile: the next step stands by.
                flags.fresh |= evaluate;
                alerts.set_persistence(false, false, Some("the alert lease was taken over".into()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "alert state not written to Redis; kept in memory");
                alerts.outbox.undone(w.done);
                flags.fresh |= evaluate;
                alerts.set_persistence(false, true, Some(e.to_string()));
            }
        }
    } else {
        flags.fresh |= evaluate;
    }
    alerts.outbox.release();
}

/// `rule`'s value at `now` and what the answer said was degraded.
async fn value_of(
    state: &AppState,
    rule: &AlertRule,
    now: i64,
) -> Result<(Option<f64>, Vec<String>), String> {
    let view = state
        .inner
        .views
        .get(&rule.view)
        .ok_or_else(|| format!("no view `{}`", rule.view))?;
    let raw = query_of(rule, now);
    let q = Query::parse(
        view,
        Some(&raw),
        now,
        state.limits(),
        &state.inner.cfg.lookups,
    )
    .map_err(|e| e.message)?;
    let bytes = execute(state, view, q).await.map_err(|e| e.message)?;
    let answer: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let degraded = answer["degraded"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok((answer["totals"][&rule.measure].as_f64(), degraded))
}

/// The query string that reads `rule`'s value at `now`.
pub fn query_of(rule: &AlertRule, now: i64) -> String {
    let mut raw = format!(
        "from={}&to={now}&measures={}",
        now - rule.window.0,
        encode(&rule.measure)
    );
    for (column, values) in &rule.filter {
        for v in values {
            raw += &format!("&filter={}", encode(&format!("{column}:{v}")));
        }
    }
    raw
}

/// Percent-encode a query component.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
