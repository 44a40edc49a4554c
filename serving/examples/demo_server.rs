//! A self-contained serving stack for fuzzing, benchmarks and the browser test:
//! a private redis-server (testkit) and an in-memory object store filled with
//! the test fixture's random events (snapshot below the cut, Redis at and
//! above it), served on the address in argv[1] (default 127.0.0.1:8099) until
//! Ctrl-C.
//!
//! `cargo run -p tally-serving --example demo_server -- 127.0.0.1:8099`

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use common::*;
use object_store::memory::InMemory;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let redis = tally_testkit::Redis::start().expect("start redis-server");
    let evs = events(1, n);
    let store = Arc::new(InMemory::new());
    publish_snapshot(&store, &view(), &evs, T0 / EPOCH_MS + 30, "demo").await;
    write_speed(&redis.url(), "t", &view(), &evs).await;
    let mut cfg = config(&redis.url(), "t");
    cfg.serve.listen = addr.clone();
    cfg.serve.admin_token = Some("admin".into());
    // A stand-in recompute hook: the real one lives in the binary.
    let hook: tally_serving::RecomputeHook = Arc::new(|req: tally_serving::RecomputeRequest| {
        let fut: std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<String, tally_serving::RecomputeError>>
                    + Send,
            >,
        > = Box::pin(async move { Ok(format!("demo: would recompute {:?}", req.view)) });
        fut
    });
    let opts = tally_serving::ServeOptions {
        recompute: Some(hook),
        ..Default::default()
    };
    eprintln!("serving {n} events on http://{addr}/ (data from 2024-01-01 for 48h)");
    let r = tally_serving::serve_with(cfg, store, opts, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    drop(redis);
    if let Err(e) = r {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
