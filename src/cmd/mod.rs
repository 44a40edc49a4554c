//! One file per subcommand; each role (`speed`, `archive`, `batch`, `serve`)
//! exposes a `role` function that `run` composes into one process.

pub mod archive;
pub mod batch;
pub mod check;
pub mod demo;
pub mod gen;
pub mod progress;
pub mod recompute;
pub mod run;
pub mod serve;
pub mod speed;

use std::sync::Arc;

use anyhow::Context;
use object_store::ObjectStore;
use tally_core::config::Config;

/// The configured object store (`[store] url`).
pub fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn ObjectStore>> {
    tally_store::open(&cfg.store)
        .with_context(|| format!("open the object store `{}`", cfg.store.url))
}
