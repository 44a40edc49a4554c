//! `tally speed`: the speed layer alone, until SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context;
use object_store::ObjectStore;
use tally_core::config::Config;
use tokio_util::sync::CancellationToken;

/// The speed role: Kafka to Redis counters until `shutdown`, then flush.
pub(crate) async fn role(
    cfg: Arc<Config>,
    store: Arc<dyn ObjectStore>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let summary = tally_speed::run(cfg, store, shutdown)
        .await
        .context("speed layer")?;
    tracing::info!(
        events = summary.events,
        chunks = summary.chunks,
        fenced = summary.fenced,
        "speed layer summary"
    );
    Ok(())
}

/// The speed role alone, restarted with backoff when it fails.
pub(crate) async fn run(cfg: Config) -> anyhow::Result<()> {
    let shutdown = crate::shutdown::on_signal();
    crate::telemetry::install(cfg.speed.metrics_listen.as_deref())?;
    let store = crate::cmd::open_store(&cfg)?;
    let cfg = Arc::new(cfg);
    crate::supervise::supervise("speed", Default::default(), shutdown, move |t| {
        role(cfg.clone(), store.clone(), t)
    })
    .await
}
