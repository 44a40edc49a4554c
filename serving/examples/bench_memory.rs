//! The serving memory benchmark (`serving/bench/memory.sh`): the resident
//! memory of `tally serve` with 30 days x 1M groups per day of snapshot in
//! the store, while queries read every day.
//!
//! History (written once into `BENCH_DIR`, then reused): one view `big`
//! (1-minute buckets by `properties.page`; count, sum, max and distinct),
//! `BENCH_DAYS` days (default 30) of 1,440 minutes x `BENCH_PAGES` pages
//! (default 700): 1,008,000 (bucket, group) rows per day at the base level,
//! with its 1h and 1d roll-ups, in a `file://` store. Then `tally serve`
//! (`TALLY_BIN`, default config: `serve.cache_bytes` 256 MiB) answers, in
//! turn: the whole range by 5 minutes (a base-level scan of every day), by
//! day and page (the daily level), by hour for one page (the hourly level),
//! and each day by minute for one page. The peak resident set (`VmHWM`) is
//! sampled from `/proc` after every query.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{roll_up, write_level, write_manifest, CellKey};
use object_store::local::LocalFileSystem;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_core::agg::{Agg, AggKind, Num};
use tally_core::time::MS_PER_DAY;
use tally_core::view::ViewDef;
use tally_testkit::config::TestConfig;
use tally_testkit::Redis;

const VIEW: &str = r#"
[[view]]
name = "big"
dimensions = ["properties.page"]
granularity = "1m"
measures = [
  { name = "views", agg = "count" },
  { name = "duration", agg = "sum", field = "properties.duration" },
  { name = "longest", agg = "max", field = "properties.duration" },
  { name = "users", agg = "distinct", field = "user_id" },
]
"#;

/// 2024-01-01T00:00:00Z: the first day of the history.
const START: i64 = 1_704_067_200_000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One day of the view: every page in every minute.
fn day_cells(view: &ViewDef, day: i64, pages: usize) -> BTreeMap<CellKey, Vec<Agg>> {
    let mut rng = StdRng::seed_from_u64(day as u64);
    let mut out = BTreeMap::new();
    let names: Vec<Vec<Option<String>>> =
        (0..pages).map(|p| vec![Some(format!("/p{p}"))]).collect();
    for minute in 0..1440 {
        let b = day * MS_PER_DAY + minute * 60_000;
        for group in &names {
            let n = rng.gen_range(1..4);
            let aggs = view
                .measures
                .iter()
                .map(|m| {
                    let mut a = Agg::empty(m.agg);
                    for _ in 0..n {
                        match m.agg {
                            AggKind::Count => a.add_key(b""),
                            AggKind::Distinct => a.add_key(
                                format!("user_{}", rng.gen_range(0..1_000_000)).as_bytes(),
                            ),
                            _ => a.add_num(Num::Int(rng.gen_range(1..600))),
                        }
                    }
                    a
                })
                .collect();
            out.insert((b, group.clone()), aggs);
        }
    }
    out
}

/// Peak and current resident set of `pid`, MiB.
fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let days: i64 = env_or("BENCH_DAYS", 30);
    let pages: usize = env_or("BENCH_PAGES", 700);
    let tally = std::env::var("TALLY_BIN").expect("TALLY_BIN: a release build of `tally`");
    let dir = std::path::PathBuf::from(
        std::env::var("BENCH_DIR").expect("BENCH_DIR: where the history is kept"),
    );
    std::fs::create_dir_all(dir.join("store")).expect("dir");
    let store = LocalFileSystem::new_with_prefix(dir.join("store")).expect("store");
    let view = TestConfig::new().views(VIEW).build().views.remove(0);
    let first_day = START / MS_PER_DAY;
    let marker = dir.join(format!("history-{days}x{pages}.complete"));
    if !marker.exists() {
        let mut files = Vec::new();
        let mut bytes = 0u64;
        for day in first_day..first_day + days {
            let started = Instant::now();
            let base = day_cells(&view, day, pages);
            for level in view.levels() {
                let cells = if level == view.granularity {
                    base.clone()
                } else {
                    roll_up(&base, level)
                };
                let written = rt.block_on(write_level(&store, &view, &cells, "memory", level));
                bytes += written.iter().filter_map(|d| d.bytes).sum::<u64>();
                files.extend(written);
            }
            eprintln!(
                "[memory] day {} of {days}: {} rows in {:.1} s",
                day - first_day + 1,
                base.len(),
                started.elapsed().as_secs_f64()
            );
        }
        let cut = (first_day + days) * 24;
        rt.block_on(write_manifest(
            &store,
            &view,
            "memory",
            cut,
            &view.levels(),
            files,
            0,
        ));
        std::fs::write(&marker, bytes.to_string()).expect("marker");
    }
    let stored: u64 = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);

    let redis = Redis::start().expect("redis");
    let port = tally_testkit::free_port().expect("port");
    let cfg = TestConfig::new()
        .redis(&redis.url())
        .store(&format!("file://{}", dir.join("store").display()))
        .extra(&format!(
            "[serve]\nlisten = \"127.0.0.1:{port}\"\nrequest_timeout = \"10m\"\n"
        ))
        .views(VIEW);
    let logs = tempfile::Builder::new()
        .prefix("memory-")
        .tempdir()
        .expect("tempdir");
    let config = logs.path().join("tally.toml");
    std::fs::write(&config, cfg.toml()).expect("config");
    let log = std::fs::File::create(logs.path().join("serve.log")).expect("log");
    let serve = Killed(
        Command::new(&tally)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tally serve"),
    );
    let pid = serve.0.id();
    let api = format!("http://127.0.0.1:{port}");
    let ready = Instant::now();
    while std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(120),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (from, to) = (START, START + days * MS_PER_DAY);
    println!(
        "[memory] {days} days x {} rows/day at the base level ({:.0} MiB of Parquet with roll-ups) in the store; serve.cache_bytes default; idle RSS {:.0} MiB",
        1440 * pages,
        stored as f64 / (1 << 20) as f64,
        rss(pid).1
    );
    let mut queries = vec![
        (
            "whole range by 5m (base level, every day)".to_owned(),
            format!("from={from}&to={to}&granularity=5m&measures=views,duration,longest,users"),
        ),
        (
            "whole range by day and page (daily level)".to_owned(),
            format!("from={from}&to={to}&granularity=1d&group_by=properties.page"),
        ),
        (
            "whole range by hour, one page (hourly level)".to_owned(),
            format!("from={from}&to={to}&granularity=1h&filter=properties.page:%2Fp7"),
        ),
    ];
    for d in 0..days {
        let a = START + d * MS_PER_DAY;
        queries.push((
            format!("day {} by minute, one page (base level)", d + 1),
            format!(
                "from={a}&to={}&granularity=1m&filter=properties.page:%2Fp3",
                a + MS_PER_DAY
            ),
        ));
    }
    queries.push(queries[0].clone());
    let client = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).map(drop);
    assert!(client.is_ok());
    let mut peak: f64 = 0.0;
    for (label, q) in &queries {
        let started = Instant::now();
        let url = format!("{api}/api/v1/views/big/query?{q}");
        let status = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
            .output()
            .expect("curl");
        let code = String::from_utf8_lossy(&status.stdout).to_string();
        let (hwm, now) = rss(pid);
        peak = peak.max(hwm);
        println!(
            "[memory] {label}: HTTP {code} in {:.2} s; RSS {now:.0} MiB, peak {hwm:.0} MiB",
            started.elapsed().as_secs_f64()
        );
    }
    println!("[memory] peak RSS of tally serve: {peak:.0} MiB (target: at most 1,024 MiB)");
    drop(redis);
}
