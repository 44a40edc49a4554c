//! Archiver benchmark: `tally archive` draining a pre-filled topic into the
//! master dataset (Parquet, format v2, on `file://`), timed from spawn until
//! every partition's stored progress reaches the topic's end.
//!
//! `cargo bench --workspace --bench archive_drain` (env BENCH_EVENTS, default
//! 5,000,000; BENCH_ROUNDS, default 3; BENCH_BASELINE_BIN, another `tally`
//! build measured in the same rounds, alternating). The topic is filled as
//! `benches/speed_drain.rs` fills it (the same generator shape, 4
//! partitions, a private Tansu with memory storage), and the archiver runs
//! with the same two views, so the same properties are promoted. Rolls:
//! `archive.roll_bytes` at its default (128 MiB of raw records per
//! partition), `archive.roll_interval` 1 s so that the last partial files
//! are written right after the drain. Prints events/s, CPU-seconds per
//! million events and peak RSS (VmHWM) as medians.

use std::process::Command;
use std::time::{Duration, Instant};

use tally_gen::{Generator, Shape};
use tally_store::progress::ProgressFile;
use tally_testkit::config::{TestConfig, DRAIN_VIEWS as VIEWS, TOPIC};
use tally_testkit::{kafka, Broker};

const PARTITIONS: i32 = 4;

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let n = env("BENCH_EVENTS", 5_000_000);
    let rounds = env("BENCH_ROUNDS", 3);
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
                kafka::Record {
                    partition: part,
                    payload: generator.next(ts).payload,
                    timestamp_ms: ts,
                }
            })
            .collect();
        kafka::produce(&p, TOPIC, &recs).expect("produce");
    }
    // Optionally a second `tally` build (say, the commit before an
    // optimisation) measured in the same rounds: before/after on equal terms.
    let mut bins = vec![(
        "tally archive (decode, v2 Parquet, file://)",
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_tally")),
        Vec::new(),
    )];
    if let Some(b) = std::env::var_os("BENCH_BASELINE_BIN") {
        bins.push((
            "tally archive, baseline build (BENCH_BASELINE_BIN)",
            b.into(),
            Vec::new(),
        ));
    }
    for round in 0..rounds {
        for (i, (name, bin, runs)) in bins.iter_mut().enumerate() {
            let run = run_archive(bin, &broker, &ends, n, &format!("bench-{round}-{i}"));
            eprintln!("round {round}: {name}: {run:?}");
            runs.push(run);
        }
    }
    println!("| process | events/s (median of {rounds}) | CPU-s per 1M events | peak RSS MiB |");
    println!("|---|---|---|---|");
    let mut eps = Vec::new();
    for (name, _, runs) in &bins {
        let med = |f: &dyn Fn(&Run) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        eps.push(med(&|r| r.eps));
        println!(
            "| {name} | {:.0} | {:.2} | {:.0} |",
            med(&|r| r.eps),
            med(&|r| r.cpu / (n as f64 / 1e6)),
            med(&|r| r.rss)
        );
    }
    if eps.len() > 1 {
        println!(
            "\nratio this build / baseline build = {:.2}",
            eps[0] / eps[1]
        );
    }
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at the end: {}", load.trim());
    }
}

#[derive(Debug, Clone, Copy)]
struct Run {
    eps: f64,
    cpu: f64,
    rss: f64,
}

/// `tally archive` (binary `bin`) into a fresh store, timed until every
/// partition's progress object says it is archived to the end.
fn run_archive(bin: &std::path::Path, broker: &Broker, ends: &[i64], n: usize, group: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tally.toml");
    let store = dir.path().join("store");
    let toml = TestConfig::new()
        .brokers(&broker.bootstrap())
        .group(group)
        .store(&format!("file://{}", store.display()))
        .extra("[archive]\nroll_interval = \"1s\"")
        // The speed benchmark's views: the archiver promotes the properties they read.
        .views(VIEWS)
        .toml();
    std::fs::write(&cfg, toml).unwrap();
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(["archive", "--config"])
        .arg(&cfg)
        .env("TALLY_KAFKA__ASSIGNMENT", "all")
        .env(
            "RUST_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .expect("tally archive");
    let pid = child.id();
    let mut last = (0.0f64, 0.0f64);
    loop {
        let done = (0..PARTITIONS).all(|p| {
            let path = store.join(tally_store::paths::archive_progress(TOPIC, p));
            std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<ProgressFile>(&b).ok())
                .is_some_and(|ProgressFile::V1 { archived_to, .. }| archived_to >= ends[p as usize])
        });
        let u = usage(pid);
        last = (last.0.max(u.0), last.1.max(u.1));
        if done || start.elapsed() > Duration::from_secs(600) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
    Run {
        eps: n as f64 / secs,
        cpu: last.0,
        rss: last.1,
    }
}

/// (CPU seconds, peak RSS MiB) of a live process, from /proc.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse::<f64>().ok())
        .unwrap_or(0.0);
    (ticks / 100.0, hwm / 1024.0)
}
