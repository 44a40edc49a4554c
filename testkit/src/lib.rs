//! # tally-testkit: real services, privately, for tests
//!
//! Each [`Redis`], [`RedisCluster`] and [`Broker`] is a real server process (Debian's
//! `redis-server`, the Tansu broker that `infra/up` installs) started on a free
//! loopback port with its files in a temporary folder, and killed when the value
//! is dropped. Test binaries run in parallel and never touch a user's services.
//!
//! Beside the services: [`config`] builds the standard test `tally.toml`, and
//! [`truth`] is the independent plain fold that tests compare the layers
//! with (fed by `tally-gen`'s generator or any records).
//!
//! Binaries are found through `TALLY_REDIS_SERVER` / `TALLY_TANSU` when set,
//! else `redis-server` on `PATH` and Tansu under `$TALLY_CACHE` (default
//! `~/.cache/tally`), where `infra/up` puts it.

mod broker;
pub mod config;
pub mod kafka;
mod process;
mod redis;
mod redis_cluster;
pub mod tls;
pub mod truth;

pub use broker::{tansu_bin, Broker};
pub use process::{free_port, Error};
pub use redis::Redis;
pub use redis_cluster::RedisCluster;
/// The generator, for test crates that reach it through the testkit.
pub use tally_gen as gen;

/// The runtime the synchronous tests drive async code with: two workers,
/// all drivers on (the testkit's own helpers block, so tests create topics
/// before entering it).
pub fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("build a tokio runtime: {e}"),
    }
}
