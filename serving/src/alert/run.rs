//! Evaluating the alert rules: each rule's value read through the query
//! API's own path ([`crate::query::execute`]), and the loop that does it
//! every `alerting.interval` beside the webhook delivery task.

use tally_core::config::AlertRule;

use crate::query::execute::execute;
use crate::query::Query;
use crate::state::{now_ms, AppState};

/// The alert loop (first evaluation one interval after start) and the
/// webhook delivery task, until [`AppState::stop`]; nothing without rules.
pub(crate) fn spawn(state: &AppState) -> tokio::task::JoinHandle<()> {
    let state = state.clone();
    tokio::spawn(async move {
        let alerts = &state.inner.alerts;
        let Some(inbox) = alerts.take_inbox().filter(|_| !alerts.rules().is_empty()) else {
            return;
        };
        let cfg = state.inner.cfg.alerting.clone();
        let period = cfg.interval.as_duration();
        let delivery = tokio::spawn(super::deliver::run(
            inbox,
            cfg,
            alerts.stats(),
            state.until_stopped(),
        ));
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
    })
}

/// Evaluate every rule at `now` through the query path, one after another.
pub async fn evaluate(state: &AppState, now: i64) {
    let alerts = &state.inner.alerts;
    for (i, rule) in alerts.rules().iter().enumerate() {
        let outcome = value_of(state, rule, now).await;
        alerts.record(i, now, outcome);
    }
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
