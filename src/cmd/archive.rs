//! `tally archive`: the archiver alone, until SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context;
use object_store::ObjectStore;
use tally_core::config::Config;
use tokio_util::sync::CancellationToken;

/// The archive role: Kafka to the master dataset until `shutdown`; then the
/// buffered records are rolled and progress and cut published.
pub(crate) async fn role(
    cfg: Arc<Config>,
    store: Arc<dyn ObjectStore>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let summary = tally_batch::archive::run(&cfg, store, shutdown.cancelled_owned())
        .await
        .context("archiver")?;
    tracing::info!(
        records = summary.records,
        files = summary.files,
        cut = ?summary.cut,
        "archiver stopped"
    );
    Ok(())
}

/// The archive role alone, restarted with backoff when it fails.
pub(crate) async fn run(cfg: Config) -> anyhow::Result<()> {
    crate::alloc::no_transparent_huge_pages();
    let shutdown = crate::shutdown::on_signal();
    crate::telemetry::install(cfg.archive.metrics_listen.as_deref())?;
    let store = crate::cmd::open_store(&cfg)?;
    let cfg = Arc::new(cfg);
    crate::supervise::supervise("archive", Default::default(), shutdown, move |t| {
        role(cfg.clone(), store.clone(), t)
    })
    .await
}
