//! `tally run`: every role in one process (speed, archive, the batch
//! scheduler and serving) under one config. One SIGTERM stops them all: each
//! role gets a child of the process's cancellation token and flushes what it
//! holds. If a role fails, the others are stopped too and the error is
//! returned, so a supervisor restarts the whole process rather than running
//! it half-alive.

use std::sync::Arc;

use anyhow::anyhow;
use tally_core::config::Config;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cmd::{archive, batch, serve, speed};

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let shutdown = crate::shutdown::on_signal();
    let metrics = crate::telemetry::install(None)?;
    let store = crate::cmd::open_store(&cfg)?;
    run_roles(Arc::new(cfg), store, metrics, shutdown).await
}

/// Run the four roles until `shutdown` (or until one fails).
pub async fn run_roles(
    cfg: Arc<Config>,
    store: Arc<dyn object_store::ObjectStore>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut roles: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let (c, s, t) = (cfg.clone(), store.clone(), shutdown.child_token());
    roles.spawn(async move { ("speed", speed::role(c, s, t).await) });
    let (c, s, t) = (cfg.clone(), store.clone(), shutdown.child_token());
    roles.spawn(async move { ("archive", archive::role(c, s, t).await) });
    let (c, s, t) = (cfg.clone(), store.clone(), shutdown.child_token());
    roles.spawn(async move { ("batch scheduler", batch::schedule_role(c, s, t).await) });
    let (c, s, t) = (cfg.clone(), store.clone(), shutdown.child_token());
    roles.spawn(async move { ("serve", serve::role(c, s, metrics, t).await) });

    let mut failures = Vec::new();
    while let Some(done) = roles.join_next().await {
        let (name, result) = done.unwrap_or_else(|e| ("a role", Err(anyhow!("panicked: {e}"))));
        match result {
            Ok(()) if shutdown.is_cancelled() => tracing::info!(role = name, "stopped"),
            Ok(()) => {
                failures.push(format!("{name}: stopped on its own"));
                shutdown.cancel();
            }
            Err(e) => {
                tracing::error!(
                    role = name,
                    error = format!("{e:#}"),
                    "role failed; stopping the others"
                );
                failures.push(format!("{name}: {e:#}"));
                shutdown.cancel();
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{}", failures.join("; ")))
    }
}
