//! The serving latency benchmark's server (`serving/bench/latency.sh`): a day
//! of 1-minute buckets in both layers, served until Ctrl-C.
//!
//! Data: for every minute of 2024-01-01 and every (page, country) group of the
//! test fixture's view (5 pages x 3 countries), one event whose ingest epoch is
//! below the cut (so it is in the batch snapshot, Parquet in a `memory://`
//! store) and one at or after the cut (so it is a speed-layer delta in a
//! private Redis): 1,440 x 15 = 21,600 cells in each layer, every one of them
//! merged by a 24-hour query. Prints `ready` and the query URL on stdout once
//! serving. `TALLY_BENCH_RESULT_TTL_MS` sets the answer cache's TTL (default 0:
//! off, every request merges afresh). A lookup table `section` (page →
//! section, CSV in the store) serves the lookup variant of the query.
//! `TALLY_BENCH_REDIS=cluster` puts the speed side in a private 3-master
//! Redis Cluster with 16 partition groups (the cells spread over the groups
//! as partitions spread them), for issue 16's serving target.
//!
//! `cargo build --release --workspace --example bench_server`, then
//! `$CARGO_TARGET_DIR/release/examples/bench_server 127.0.0.1:8098`; Ctrl-C or
//! SIGTERM stops it and its Redis.

#[path = "../tests/common/mod.rs"]
mod common;

// As in the `tally` binary (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use common::*;
use object_store::memory::InMemory;
use tally_core::agg::Num;

#[tokio::main]
async fn main() {
    let stop = stopped();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8098".into());
    let ttl_ms: u64 = std::env::var("TALLY_BENCH_RESULT_TTL_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let cut = T0 / EPOCH_MS + 24;
    let mut evs = Vec::new();
    for minute in 0..1440i64 {
        for (pi, page) in PAGES.iter().enumerate() {
            for (ci, country) in COUNTRIES.iter().enumerate() {
                let g = (pi * COUNTRIES.len() + ci) as i64;
                for (k, epoch) in [(0, cut - 1), (1, cut + 1)] {
                    evs.push(Ev {
                        t: T0 + minute * 60_000 + k * 1000 + g,
                        epoch,
                        page: Some((*page).to_owned()),
                        country: Some((*country).to_owned()),
                        duration: Some(Num::Int((minute * 7 + g * 13 + k) % 500)),
                        user: format!("user_{}", (minute * 15 + g + k * 7) % 5000),
                    });
                }
            }
        }
    }
    let cluster = std::env::var("TALLY_BENCH_REDIS").is_ok_and(|m| m == "cluster");
    let store = Arc::new(InMemory::new());
    publish_snapshot(&store, &view(), &evs, cut, "bench").await;
    let (mut cfg, _redis) = if cluster {
        speed_in_cluster(&evs).await
    } else {
        let redis = match tally_testkit::Redis::start() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("cannot start redis-server: {e}");
                std::process::exit(1);
            }
        };
        write_speed(&redis.url(), "t", &view(), &evs).await;
        (config(&redis.url(), "t"), Box::new(redis) as Backend)
    };
    let sections: String = PAGES
        .iter()
        .enumerate()
        .map(|(i, p)| format!("\"{p}\",s{}\n", i % 2))
        .collect();
    let table = object_store::path::Path::from("lookups/sections.csv");
    let payload = object_store::PutPayload::from(format!("page,section\n{sections}").into_bytes());
    if let Err(e) = object_store::ObjectStoreExt::put(store.as_ref(), &table, payload).await {
        eprintln!("cannot write the lookup table: {e}");
        std::process::exit(1);
    }
    cfg.lookups = vec![tally_core::config::LookupConfig {
        name: "section".into(),
        path: table.to_string(),
        key: "page".into(),
        value: "section".into(),
        missing: None,
    }];
    cfg.serve.listen = addr.clone();
    cfg.serve.answer_ttl = tally_core::config::Millis(ttl_ms as i64);
    let opts = tally_serving::ServeOptions::default();
    println!(
        "ready http://{addr}/api/v1/views/pv/query?from={T0}&to={}&granularity=1h&group_by=properties.page ({} events, answer_ttl {ttl_ms} ms)",
        T0 + 86_400_000,
        evs.len()
    );
    let r = tally_serving::serve_with(cfg, store, opts, stop).await;
    if let Err(e) = r {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

/// Ctrl-C or SIGTERM (what `latency.sh` sends). Either ends `main`
/// normally, so that its Redis is dropped and stopped: killed without a
/// handler, the server left its `redis-server` running, one per round. The
/// SIGTERM handler is installed when this is called (the start of `main`),
/// not when the future is first polled: a SIGTERM during the set-up would
/// otherwise kill the process with the default action and leak its Redis.
fn stopped() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate()).ok();
    async move {
        match term {
            Some(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// The Redis the server reads, kept alive until the end (dropping it stops
/// its servers).
type Backend = Box<dyn std::any::Any>;

const GROUPS: u32 = 16;

/// A 3-master cluster holding the speed cells, event `i` in partition
/// group `i mod 16`, and the config that reads it.
async fn speed_in_cluster(evs: &[Ev]) -> (tally_core::config::Config, Backend) {
    let cluster =
        match tokio::task::spawn_blocking(|| tally_testkit::RedisCluster::start(3, 0)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                eprintln!("cannot start a redis cluster: {e}");
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("cannot start a redis cluster: {e}");
                std::process::exit(1);
            }
        };
    let mut cfg = config("redis://127.0.0.1:1/", "t");
    cfg.redis.mode = tally_core::config::RedisMode::Cluster;
    cfg.redis.nodes = cluster.seeds();
    cfg.redis.partition_groups = Some(GROUPS);
    let layout = cfg.redis.layout();
    // A slice is one pipeline: a big one takes seconds on a loaded machine.
    let client = redis::cluster::ClusterClientBuilder::new(cluster.seeds())
        .response_timeout(std::time::Duration::from_secs(120))
        .build();
    let mut con = match client {
        Ok(c) => match c.get_async_connection().await {
            Ok(con) => con,
            Err(e) => {
                eprintln!("cannot connect to the redis cluster: {e}");
                std::process::exit(1);
            }
        },
        Err(e) => {
            eprintln!("bad cluster seeds: {e}");
            std::process::exit(1);
        }
    };
    for g in 0..GROUPS {
        let part: Vec<Ev> = evs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u32 % GROUPS == g)
            .map(|(_, e)| e.clone())
            .collect();
        write_speed_in(&mut con, &layout.keys(g), &view(), &part).await;
    }
    (cfg, Box::new(cluster))
}
