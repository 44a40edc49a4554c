//! Speed-layer benchmark: `tally speed` draining a pre-filled topic into Redis,
//! next to a bare librdkafka consume-and-discard of the same topic, same run.
//!
//! `cargo bench --bench speed_drain` (env BENCH_EVENTS, default 5,000,000;
//! BENCH_ROUNDS, default 3). Prints events/s, CPU-seconds per million events
//! and peak RSS of each process (from /proc), and the medians and ratio.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use tally_core::config::Millis;
use tally_gen::{Generator, Shape, Weighted};
use tally_testkit::config::{TestConfig, TOPIC};
use tally_testkit::{kafka, Broker, Redis};
const PARTITIONS: i32 = 4;

/// The two views this benchmark has always measured.
const VIEWS: &str = r#"
[[view]]
name = "page_views"
filter = { event_type = ["page_view"] }
dimensions = ["properties.page"]
granularity = "1m"
measures = [
  { name = "views", agg = "count" },
  { name = "duration", agg = "sum", field = "properties.duration" },
  { name = "longest", agg = "max", field = "properties.duration" },
  { name = "users", agg = "distinct", field = "user_id" },
]
[[view]]
name = "by_type"
dimensions = ["event_type"]
granularity = "1m"
measures = [{ name = "events", agg = "count" }]
"#;

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
    let broker = Broker::start().expect("broker");
    kafka::create_topic(&broker.bootstrap(), TOPIC, PARTITIONS).expect("topic");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let base = now - 3_600_000;
    eprintln!("producing {n} events…");
    // The shared generator, shaped like the traffic this benchmark has
    // always measured: no late or malformed records, event times within 5 s
    // of their Kafka time, 50 pages, 100,000 users.
    let shape = Shape {
        event_types: vec![
            Weighted::new("page_view", 2.0),
            Weighted::new("click", 1.0),
            Weighted::new("signup", 1.0),
        ],
        pages: 50,
        users: 100_000,
        late_share: 0.0,
        out_of_order_share: 1.0,
        max_jitter: Millis(5_000),
        malformed_share: 0.0,
        ..Shape::default()
    };
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
                kafka::Record { partition: part, payload: g.payload, timestamp_ms: ts }
            })
            .collect();
        kafka::produce(&p, TOPIC, &recs).expect("produce");
    }
    let avg_len = 200;
    eprintln!("produced; ~{avg_len} bytes/event");
    let bare_bin =
        std::path::Path::new(env!("CARGO_BIN_EXE_tally")).with_file_name("examples/bare_consume");
    let mut rows: HashMap<&str, Vec<(f64, f64, f64)>> = HashMap::new();
    for round in 0..rounds {
        // Bare consumer.
        let start = Instant::now();
        let mut child = Command::new(&bare_bin)
            .args([broker.bootstrap(), TOPIC.into(), PARTITIONS.to_string(), n.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run examples/bare_consume (cargo build --release --example bare_consume -p tally-speed)");
        let pid = child.id();
        let mut last = (0.0, 0.0);
        while child.try_wait().expect("wait").is_none() {
            let u = usage(pid);
            if u.0 > 0.0 {
                last = u;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            use std::io::Read;
            let _ = out.read_to_string(&mut stdout);
        }
        let secs: f64 = stdout
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(start.elapsed().as_secs_f64());
        rows.entry("bare librdkafka consume+discard")
            .or_default()
            .push((n as f64 / secs, last.0, last.1));
        eprintln!(
            "round {round}: bare {:.0} ev/s, cpu {:.2}s, rss {:.0} MiB",
            n as f64 / secs,
            last.0,
            last.1
        );

        // tally speed, into a fresh Redis.
        let redis = Redis::start().expect("redis");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("tally.toml");
        let toml = TestConfig::new()
            .brokers(&broker.bootstrap())
            .redis(&redis.url())
            .group(&format!("bench-{round}"))
            .key_prefix("b")
            .views(VIEWS)
            .toml();
        std::fs::write(&cfg, toml).unwrap();
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["speed", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("tally speed");
        let pid = child.id();
        let mut con = redis::Client::open(redis.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut last = (0.0, 0.0);
        loop {
            let stored: HashMap<String, i64> = redis::cmd("HGETALL")
                .arg("b:off")
                .query(&mut con)
                .unwrap_or_default();
            let done = (0..PARTITIONS)
                .all(|p| stored.get(&format!("{TOPIC}/{p}")) == Some(&ends[p as usize]));
            last = usage(pid);
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
        rows.entry("tally speed (decode, 2 views, Redis)")
            .or_default()
            .push((n as f64 / secs, last.0, last.1));
        eprintln!(
            "round {round}: speed {:.0} ev/s, cpu {:.2}s, rss {:.0} MiB",
            n as f64 / secs,
            last.0,
            last.1
        );
    }
    println!("| process | events/s (median of {rounds}) | CPU-s per 1M events | peak RSS MiB |");
    println!("|---|---|---|---|");
    let mut med = HashMap::new();
    for (name, r) in &rows {
        let eps = median(r.iter().map(|x| x.0).collect());
        let cpu = median(r.iter().map(|x| x.1 / (n as f64 / 1e6)).collect());
        let rss = median(r.iter().map(|x| x.2).collect());
        med.insert(*name, eps);
        println!("| {name} | {eps:.0} | {cpu:.2} | {rss:.0} |");
    }
    if let (Some(s), Some(b)) = (
        med.get("tally speed (decode, 2 views, Redis)"),
        med.get("bare librdkafka consume+discard"),
    ) {
        println!("\nratio speed / bare = {:.2}", s / b);
    }
}
