//! Speed-layer benchmark: `tally speed` draining a pre-filled topic into Redis,
//! next to a bare librdkafka consume-and-discard of the same topic, same run.
//!
//! `cargo bench --bench speed_drain` (env BENCH_EVENTS, default 5,000,000;
//! BENCH_ROUNDS, default 3; BENCH_BASELINE_BIN, another `tally` build to
//! measure in the same rounds). It builds the peer (`speed/examples/
//! bare_consume.rs`) itself. Both processes are timed from spawn until the
//! last record is consumed (bare) or its offset is stored in Redis (speed).
//! Prints events/s, CPU-seconds per million events of the process and of
//! Redis (the apply script runs there), and peak RSS (VmHWM from /proc), as
//! medians, and the ratios.
//!
//! `BENCH_CLUSTER=1` adds a row per round: two `tally speed` processes
//! (`kafka.assignment = "partitions"`, partitions 0-1 and 2-3) draining the
//! same topic into a private 3-master Redis Cluster (16 partition groups),
//! timed from spawn until every partition's end offset is stored; CPU, RSS
//! and Redis figures are the sums over the processes and the masters. The
//! issue-16 target is its ratio to the single-instance row.
//!
//! `BENCH_DEDUP=1` adds a row per round: the same two views with
//! `dedup = "event_id"` (each keeps its window of event_ids), run right
//! before or after the plain row (alternating by round) on the same topic.
//! The issue-18 target is its ratio to the plain row (at least 0.8).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use tally_gen::{Generator, Shape};
use tally_testkit::config::{TestConfig, DRAIN_VIEWS as VIEWS, TOPIC};
use tally_testkit::{kafka, Broker, Redis, RedisCluster};

const PARTITIONS: i32 = 4;

/// [`VIEWS`] with `dedup = "event_id"` on both.
fn dedup_views() -> String {
    VIEWS.replace(
        "granularity = \"1m\"",
        "granularity = \"1m\"\ndedup = \"event_id\"",
    )
}

fn clock_ticks() -> f64 {
    100.0 // USER_HZ on Linux
}

/// (cpu seconds, peak RSS MiB) of a live process.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let cpu = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu / clock_ticks(), hwm / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_000_000);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // The peer first: a build problem shows before the topic is filled.
    let bare_bin = bare_consumer();
    let broker = Broker::start().expect("broker");
    kafka::create_topic(&broker.bootstrap(), TOPIC, PARTITIONS).expect("topic");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let base = now - 3_600_000;
    eprintln!("producing {n} events…");
    let shape = Shape::drain();
    let mut generator = Generator::new(shape, 1).expect("bench shape");
    let p = kafka::producer(&broker.bootstrap(), 10_000).expect("producer");
    let mut ends = vec![0i64; PARTITIONS as usize];
    for chunk in (0..n).collect::<Vec<_>>().chunks(500_000) {
        let recs: Vec<kafka::Record> = chunk
            .iter()
            .map(|&i| {
                let ts = base + (i as i64 * 3_600_000 / n as i64);
                let part = (i % PARTITIONS as usize) as i32;
                ends[part as usize] += 1;
                let g = generator.next(ts);
                kafka::Record {
                    partition: part,
                    payload: g.payload,
                    timestamp_ms: ts,
                }
            })
            .collect();
        kafka::produce(&p, TOPIC, &recs).expect("produce");
    }
    let avg_len = 200;
    eprintln!("produced; ~{avg_len} bytes/event");
    // Optionally a second `tally` build (say, the commit before an
    // optimisation) measured in the same rounds: before/after on equal terms.
    let baseline = std::env::var_os("BENCH_BASELINE_BIN").map(std::path::PathBuf::from);
    let mut rows: Vec<(&str, Vec<Run>)> = vec![(BARE, Vec::new()), (SPEED, Vec::new())];
    if baseline.is_some() {
        rows.push((BASELINE, Vec::new()));
    }
    let cluster = std::env::var("BENCH_CLUSTER").is_ok_and(|v| v == "1");
    let cluster_row = rows.len();
    if cluster {
        rows.push((CLUSTER, Vec::new()));
    }
    let dedup = std::env::var("BENCH_DEDUP").is_ok_and(|v| v == "1");
    let dedup_row = rows.len();
    if dedup {
        rows.push((DEDUP, Vec::new()));
    }
    let dedup_views = dedup_views();
    for round in 0..rounds {
        // Bare consumer. Like `tally speed`, timed from spawn to the last record.
        let start = Instant::now();
        let mut child = Command::new(&bare_bin)
            .args([
                broker.bootstrap(),
                TOPIC.into(),
                PARTITIONS.to_string(),
                n.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run examples/bare_consume");
        let pid = child.id();
        let mut last = (0.0f64, 0.0f64);
        loop {
            // Sample before checking for exit: the last sample is the latest.
            // Keep maxima: an exited, unreaped process has no VmHWM any more.
            let u = usage(pid);
            last = (last.0.max(u.0), last.1.max(u.1));
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let secs = start.elapsed().as_secs_f64();
        let bare = Run {
            eps: n as f64 / secs,
            cpu: last.0,
            rss: last.1,
            redis_cpu: 0.0,
            redis_mib: 0.0,
        };
        eprintln!("round {round}: {BARE}: {bare:?}");
        rows[0].1.push(bare);

        let tally = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tally"));
        let mut bins = vec![(1, tally.clone(), VIEWS)];
        if let Some(b) = &baseline {
            bins.push((2, b.clone(), VIEWS));
        }
        if dedup {
            // Alternate which of the pair runs first.
            let at = if round % 2 == 0 { 0 } else { 1 };
            bins.insert(at, (dedup_row, tally.clone(), dedup_views.as_str()));
        }
        for (row, bin, views) in bins {
            let group = format!("bench-{round}-{row}");
            let run = run_speed(&bin, &broker, &ends, n, &group, views);
            eprintln!("round {round}: {}: {run:?}", rows[row].0);
            rows[row].1.push(run);
        }
        if cluster {
            let bin = std::path::Path::new(env!("CARGO_BIN_EXE_tally"));
            let run = run_speed_cluster(bin, &broker, &ends, n, &format!("bench-{round}-c"));
            eprintln!("round {round}: {CLUSTER}: {run:?}");
            rows[cluster_row].1.push(run);
        }
    }
    println!(
        "| process | events/s (median of {rounds}) | CPU-s per 1M events | Redis CPU-s per 1M events | peak RSS MiB | Redis used memory MiB |"
    );
    println!("|---|---|---|---|---|---|");
    let per_m = n as f64 / 1e6;
    let mut med = Vec::new();
    for (name, r) in &rows {
        let eps = median(r.iter().map(|x| x.eps).collect());
        let cpu = median(r.iter().map(|x| x.cpu / per_m).collect());
        let rcpu = median(r.iter().map(|x| x.redis_cpu / per_m).collect());
        let rss = median(r.iter().map(|x| x.rss).collect());
        let rmem = median(r.iter().map(|x| x.redis_mib).collect());
        med.push(eps);
        println!("| {name} | {eps:.0} | {cpu:.2} | {rcpu:.2} | {rss:.0} | {rmem:.0} |");
    }
    println!("\nratio speed / bare = {:.2}", med[1] / med[0]);
    if baseline.is_some() {
        println!("ratio speed / baseline build = {:.2}", med[1] / med[2]);
    }
    if dedup {
        println!(
            "ratio dedup / plain (same views) = {:.2}",
            med[dedup_row] / med[1]
        );
    }
    if cluster {
        println!(
            "ratio cluster (2 processes, 3 masters) / single instance = {:.2}",
            med[cluster_row] / med[1]
        );
    }
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at the end: {}", load.trim());
    }
}

const BARE: &str = "bare librdkafka consume+discard";
const SPEED: &str = "tally speed (decode, 2 views, Redis)";
const BASELINE: &str = "tally speed, baseline build (BENCH_BASELINE_BIN)";
const DEDUP: &str = "tally speed, the 2 views with dedup = \"event_id\"";
const CLUSTER: &str = "2 x tally speed, Redis Cluster (3 masters, 16 groups)";

/// One measured drain.
#[derive(Debug, Clone, Copy)]
struct Run {
    eps: f64,
    /// CPU seconds of the process.
    cpu: f64,
    /// Peak RSS, MiB.
    rss: f64,
    /// CPU seconds Redis spent (the apply script runs there).
    redis_cpu: f64,
    /// Redis's `used_memory` once the drain is done, MiB: the speed layer's
    /// whole state for these events (the capacity plan's memory figure).
    redis_mib: f64,
}

/// The peer's binary, built on first use (same profile as this benchmark:
/// `bench` under `cargo bench`, `dev` when the benchmark was built with
/// `cargo build --bench`).
fn bare_consumer() -> std::path::PathBuf {
    let tally = std::path::Path::new(env!("CARGO_BIN_EXE_tally"));
    let bin = tally.with_file_name("examples/bare_consume");
    let dev = tally.parent().and_then(|d| d.file_name()) == Some("debug".as_ref());
    let profile = if dev { "dev" } else { "bench" };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "building the peer: cargo build --profile {profile} --workspace --example bare_consume"
    );
    let status = Command::new(cargo)
        // The profile and the workspace-wide features of `cargo bench
        // --workspace`, so that it reuses that build instead of starting another.
        .args([
            "build",
            "--profile",
            profile,
            "--workspace",
            "--example",
            "bare_consume",
        ])
        .status();
    if !matches!(status, Ok(s) if s.success()) || !bin.exists() {
        panic!(
            "could not build {} (run: cargo build --profile {profile} --workspace --example bare_consume)",
            bin.display()
        );
    }
    bin
}

/// `tally speed` (binary `bin`) draining the topic into a fresh Redis, timed
/// from spawn until Redis stores every partition's end offset.
fn run_speed(
    bin: &std::path::Path,
    broker: &Broker,
    ends: &[i64],
    n: usize,
    group: &str,
    views: &str,
) -> Run {
    let redis = Redis::start().expect("redis");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tally.toml");
    let toml = TestConfig::new()
        .brokers(&broker.bootstrap())
        .redis(&redis.url())
        .group(group)
        .key_prefix("b")
        .views(views)
        .toml();
    std::fs::write(&cfg, toml).unwrap();
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let redis_cpu_before = redis_cpu(&mut con);
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(["speed", "--config"])
        .arg(&cfg)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .expect("tally speed");
    let pid = child.id();
    let mut last;
    loop {
        let stored: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg("b:off")
            .query(&mut con)
            .unwrap_or_default();
        let done =
            (0..PARTITIONS).all(|p| stored.get(&format!("{TOPIC}/{p}")) == Some(&ends[p as usize]));
        last = usage(pid);
        if done || start.elapsed() > Duration::from_secs(600) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    let redis_cpu = redis_cpu(&mut con) - redis_cpu_before;
    let redis_mib = info_field(&mut con, "memory", "used_memory") / (1024.0 * 1024.0);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
    Run {
        eps: n as f64 / secs,
        cpu: last.0,
        rss: last.1,
        redis_cpu,
        redis_mib,
    }
}

/// Two `tally speed` processes (partitions 0-1 and 2-3) draining the topic
/// into a fresh 3-master Redis Cluster, timed from spawn until every
/// partition's end offset is stored. CPU, RSS and Redis figures are sums.
fn run_speed_cluster(
    bin: &std::path::Path,
    broker: &Broker,
    ends: &[i64],
    n: usize,
    group: &str,
) -> Run {
    let cluster = RedisCluster::start(3, 0).expect("redis cluster");
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("tally.toml");
    let test_cfg = TestConfig::new()
        .brokers(&broker.bootstrap())
        .redis_lines(&cluster.config_lines(16))
        .group(group)
        .key_prefix("b")
        .views(VIEWS);
    std::fs::write(&cfg_path, test_cfg.toml()).unwrap();
    let layout = test_cfg.build().redis.layout();
    let mut nodes: Vec<redis::Connection> = cluster
        .seeds()
        .iter()
        .map(|u| {
            redis::Client::open(u.as_str())
                .unwrap()
                .get_connection()
                .unwrap()
        })
        .collect();
    let mut con = redis::cluster::ClusterClient::new(cluster.seeds())
        .and_then(|c| c.get_connection())
        .expect("cluster connection");
    let redis_cpu_before: f64 = nodes.iter_mut().map(redis_cpu).sum();
    let start = Instant::now();
    let mut children: Vec<std::process::Child> = ["[0, 1]", "[2, 3]"]
        .iter()
        .map(|parts| {
            Command::new(bin)
                .args(["speed", "--config"])
                .arg(&cfg_path)
                .env("TALLY_KAFKA__ASSIGNMENT", "partitions")
                .env("TALLY_KAFKA__PARTITIONS", parts)
                .env(
                    "RUST_LOG",
                    std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .spawn()
                .expect("tally speed")
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let mut last = vec![(0.0, 0.0); pids.len()];
    loop {
        let mut stored: HashMap<String, i64> = HashMap::new();
        for keys in layout.all() {
            let group: HashMap<String, i64> = redis::cmd("HGETALL")
                .arg(keys.offsets())
                .query(&mut con)
                .unwrap_or_default();
            stored.extend(group);
        }
        let done =
            (0..PARTITIONS).all(|p| stored.get(&format!("{TOPIC}/{p}")) == Some(&ends[p as usize]));
        for (l, pid) in last.iter_mut().zip(&pids) {
            *l = usage(*pid);
        }
        if done || start.elapsed() > Duration::from_secs(600) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    let redis_cpu: f64 = nodes.iter_mut().map(redis_cpu).sum::<f64>() - redis_cpu_before;
    let redis_mib: f64 = nodes
        .iter_mut()
        .map(|c| info_field(c, "memory", "used_memory"))
        .sum::<f64>()
        / (1024.0 * 1024.0);
    for (child, pid) in children.iter_mut().zip(&pids) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let _ = child.wait();
    }
    Run {
        eps: n as f64 / secs,
        cpu: last.iter().map(|l| l.0).sum(),
        rss: last.iter().map(|l| l.1).sum(),
        redis_cpu,
        redis_mib,
    }
}

/// CPU seconds Redis has used (user + system), from `INFO cpu`.
fn redis_cpu(con: &mut redis::Connection) -> f64 {
    info_field(con, "cpu", "used_cpu_user") + info_field(con, "cpu", "used_cpu_sys")
}

/// One numeric field of a Redis `INFO` section (0 when absent).
fn info_field(con: &mut redis::Connection, section: &str, field: &str) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query(con)
        .unwrap_or_default();
    info.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .find(|(k, _)| *k == field)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}
