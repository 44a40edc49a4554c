//! `tally batch run` and `tally batch schedule`: batch runs over the master
//! dataset, once now or on the configured cron schedule.

use std::sync::Arc;

use anyhow::Context;
use object_store::ObjectStore;
use tally_batch::RunOptions;
use tally_core::config::Config;
use tokio_util::sync::CancellationToken;

use crate::cmd::progress::Bar;

/// One locked batch run now, up to the cut, with a progress bar and a summary.
pub(crate) async fn run_once(cfg: Config, full: bool) -> anyhow::Result<()> {
    crate::alloc::no_transparent_huge_pages();
    let store = crate::cmd::open_store(&cfg)?;
    let opts = RunOptions {
        full,
        ..RunOptions::default()
    };
    let bar = Bar::new();
    let summary = tally_batch::run_locked(&cfg, store, opts, &|p| bar.on(p))
        .await
        .context("batch run")?;
    bar.finish();
    crate::cmd::progress::print_summary(&summary);
    Ok(())
}

/// The scheduler role: runs on `batch.schedule` until `shutdown`.
pub(crate) async fn schedule_role(
    cfg: Arc<Config>,
    store: Arc<dyn ObjectStore>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(cron = %cfg.batch.schedule, "batch scheduler started");
    tally_batch::schedule((*cfg).clone(), store, shutdown.cancelled_owned())
        .await
        .context("batch scheduler")
}

/// The scheduler alone, restarted with backoff when it fails.
pub(crate) async fn schedule(cfg: Config) -> anyhow::Result<()> {
    crate::alloc::no_transparent_huge_pages();
    let shutdown = crate::shutdown::on_signal();
    crate::telemetry::install(cfg.batch.metrics_listen.as_deref())?;
    let store = crate::cmd::open_store(&cfg)?;
    let cfg = Arc::new(cfg);
    crate::supervise::supervise("batch scheduler", Default::default(), shutdown, move |t| {
        schedule_role(cfg.clone(), store.clone(), t)
    })
    .await
}
