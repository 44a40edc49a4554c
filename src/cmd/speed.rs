//! `tally speed`: the speed layer alone, until SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context;
use tally_core::config::Config;

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    crate::telemetry::install(cfg.speed.metrics_listen.as_deref())?;
    let store = tally_batch::store::open(&cfg.store).context("open the object store")?;
    let shutdown = crate::shutdown::on_signal();
    tally_speed::run(Arc::new(cfg), store, shutdown)
        .await
        .context("speed layer")
}
