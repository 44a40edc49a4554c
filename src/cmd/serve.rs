//! `tally serve`: the query API and dashboard, with the batch layer plugged in
//! as the recompute trigger behind `POST /api/v1/recompute`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use object_store::ObjectStore;
use tally_batch::{BatchError, RunOptions};
use tally_core::config::Config;
use tally_core::time::parse_instant;
use tally_serving::{RecomputeError, RecomputeHook, RecomputeRequest, RolesProbe, ServeOptions};
use tokio_util::sync::CancellationToken;

/// How long the API waits for a triggered run before answering "started": a
/// run refused by the lock answers 409 at once, a long run keeps going.
const TRIGGER_WAIT: Duration = Duration::from_secs(2);

/// The serving role, until `shutdown`.
pub(crate) async fn role(
    cfg: Arc<Config>,
    store: Arc<dyn ObjectStore>,
    metrics: PrometheusHandle,
    roles: Option<RolesProbe>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::alloc::purge_freed_memory_at_once();
    let opts = ServeOptions {
        recompute: Some(recompute_hook(cfg.clone(), store.clone())),
        metrics: Some(metrics),
        roles,
        ..ServeOptions::default()
    };
    tally_serving::serve_with((*cfg).clone(), store, opts, shutdown.cancelled_owned())
        .await
        .context("serving layer")
}

pub(crate) async fn run(cfg: Config) -> anyhow::Result<()> {
    let shutdown = crate::shutdown::on_signal();
    let metrics = crate::telemetry::install(None)?;
    let store = crate::cmd::open_store(&cfg)?;
    role(Arc::new(cfg), store, metrics, None, shutdown).await
}

/// A locked batch run in the background for each accepted request.
fn recompute_hook(cfg: Arc<Config>, store: Arc<dyn ObjectStore>) -> RecomputeHook {
    Arc::new(move |req: RecomputeRequest| {
        let cfg = cfg.clone();
        let store = store.clone();
        Box::pin(async move {
            let range = match (instant(&req.from), instant(&req.to)) {
                (Some(from), Some(to)) if from < to => Some((from, to)),
                (None, None) => None,
                _ => {
                    return Err(RecomputeError::BadRequest(
                        "give both `from` and `to`, with from < to".to_owned(),
                    ))
                }
            };
            let opts = RunOptions {
                full: range.is_none() && req.view.is_some(),
                views: req.view.clone().map(|v| vec![v]),
                range_ms: range,
                ..RunOptions::default()
            };
            let what = format!(
                "recompute of {} {}",
                req.view.as_deref().unwrap_or("every view"),
                range.map_or("(all days)".to_owned(), |(f, t)| format!("[{f}, {t})"))
            );
            let run =
                tokio::spawn(
                    async move { tally_batch::run_locked(&cfg, store, opts, &|_| {}).await },
                );
            match tokio::time::timeout(TRIGGER_WAIT, run).await {
                Err(_) => {
                    tracing::info!("{what}: started from the API");
                    Ok(format!(
                        "{what} started; /api/v1/status shows when it is published"
                    ))
                }
                Ok(Err(join)) => Err(RecomputeError::Failed(format!("{what} failed: {join}"))),
                Ok(Ok(Err(BatchError::Locked { owner, until_ms }))) => Err(RecomputeError::Busy(
                    format!("another batch run holds the lock (owner {owner}, until {until_ms}); try later"),
                )),
                Ok(Ok(Err(e))) => Err(RecomputeError::Failed(format!("{what} failed: {e}"))),
                Ok(Ok(Ok(s))) => Ok(format!(
                    "{what} done: run {}, {} files, {} rows in {:.2} s",
                    s.run_id, s.files_read, s.rows_read, s.seconds
                )),
            }
        })
    })
}

/// A request's bound: RFC 3339 text or epoch ms (the API validated it).
fn instant(v: &Option<serde_json::Value>) -> Option<i64> {
    match v.as_ref()? {
        serde_json::Value::String(s) => parse_instant(s),
        serde_json::Value::Number(n) => n.as_i64(),
        _ => None,
    }
}
