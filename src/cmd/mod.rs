//! One file per subcommand; each role (`speed`, `archive`, `batch`, `serve`)
//! exposes a `role` function that `run` composes into one process.

pub(crate) mod archive;
pub(crate) mod batch;
pub(crate) mod check;
pub(crate) mod demo;
pub(crate) mod gen;
pub(crate) mod progress;
pub(crate) mod recompute;
pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod speed;

use std::sync::Arc;

use anyhow::Context;
use object_store::ObjectStore;
use tally_core::config::Config;

/// The configured object store (`[store] url`).
pub(crate) fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn ObjectStore>> {
    tally_store::open(&cfg.store)
        .with_context(|| format!("open the object store `{}`", cfg.store.url))
}
