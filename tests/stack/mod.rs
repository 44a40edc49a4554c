//! The services a whole-platform test runs `tally` against, set up once:
//! a private broker (optionally behind the cut-off proxy) with the event
//! and dead-letter topics, a private Redis (or a Redis Cluster), and a folder holding the store,
//! the roles' logs and a `tally.toml`: the standard test config plus what
//! every platform test shares (ten-second epochs, two-second rolls, events
//! up to two days late). Used by `platform.rs`, `partitions.rs` and
//! `dependencies.rs`.

// Shared by several test binaries, each using a part: `pub` is the
// module's surface to them, not the crate's.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use tally_core::config::Config;
use tally_testkit::config::{TestConfig, TOPIC};
use tally_testkit::{kafka, Broker, Redis, RedisCluster};
use tempfile::TempDir;

/// What differs between the platform tests.
#[derive(Debug, Default)]
pub struct Setup {
    /// The broker behind the proxy that can cut clients off.
    pub behind_proxy: bool,
    /// The store URL; default `file://` in the folder's `store/`.
    pub store: Option<String>,
    /// Lines added to the `[archive]` section.
    pub archive: String,
    /// More sections (`[batch]`, ...).
    pub extra: String,
    /// Run on a Redis Cluster: (masters, replicas per master, partition
    /// groups).
    pub redis_cluster: Option<(usize, usize, u32)>,
}

/// The running services and the config that points at them.
#[derive(Debug)]
pub struct Stack {
    pub broker: Broker,
    /// The Redis the config points at; with a cluster, a scratch Redis
    /// (for `PFCOUNT` truths) that Tally does not use.
    pub redis: Redis,
    /// The Redis Cluster the config points at, if [`Setup::redis_cluster`].
    pub cluster: Option<RedisCluster>,
    /// Store, logs and config; removed on drop.
    pub dir: TempDir,
    pub config: PathBuf,
    pub cfg: Config,
    /// `http://` address of `[serve] listen`.
    pub api: String,
}

/// A fresh folder for a test named `name` (its prefix).
pub fn dir(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir()
        .expect("tempdir")
}

impl Stack {
    /// Start the services in `dir` for a test named `name` (also the
    /// consumer group) with `partitions` partitions of the event topic.
    pub fn start(name: &str, dir: TempDir, partitions: i32, setup: Setup) -> Stack {
        let broker = if setup.behind_proxy {
            Broker::start_behind_proxy()
        } else {
            Broker::start()
        }
        .expect("broker");
        let redis = Redis::start().expect("redis");
        let cluster = setup
            .redis_cluster
            .map(|(m, r, _)| RedisCluster::start(m, r).expect("redis cluster"));
        kafka::create_topic(&broker.bootstrap(), TOPIC, partitions).expect("topic");
        kafka::create_topic(&broker.bootstrap(), "dead", 1).expect("dead-letter topic");
        let port = tally_testkit::free_port().expect("port");
        let store = setup
            .store
            .unwrap_or_else(|| format!("file://{}", dir.path().join("store").display()));
        let mut test_cfg = TestConfig::new();
        if let (Some(c), Some((_, _, groups))) = (&cluster, setup.redis_cluster) {
            test_cfg = test_cfg.redis_lines(&c.config_lines(groups));
        }
        let test_cfg = test_cfg
            .brokers(&broker.bootstrap())
            .redis(&redis.url())
            .store(&store)
            .group(name)
            .extra(&format!(
                r#"
[events]
max_past = "2d"
max_future = "1h"
[epochs]
length = "10s"
grace = "2s"
[archive]
roll_interval = "2s"
{archive}
[serve]
listen = "127.0.0.1:{port}"
{extra}
"#,
                archive = setup.archive,
                extra = setup.extra,
            ));
        let config = dir.path().join("tally.toml");
        std::fs::write(&config, test_cfg.toml()).expect("write config");
        eprintln!("{name}: logs in {}", dir.path().display());
        Stack {
            broker,
            redis,
            cluster,
            config,
            cfg: test_cfg.build(),
            api: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// Where the role `name` logs.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The store's folder (with the default store).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// `tally batch run` on this config ([`crate::role::batch_run`]).
    pub fn batch_run(&self) {
        crate::role::batch_run(&self.config)
    }
}
