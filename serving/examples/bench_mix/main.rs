//! The dashboard-mix benchmark (`serving/bench/mix.sh`): distinct queries
//! over 90 days of history in three views, with a live speed layer under
//! load, answered by `tally serve` and, as the peer, by DuckDB over the same
//! snapshot files.
//!
//! 1. History (written once into `BENCH_DIR`, then reused): 90 UTC days up to
//!    today of three views, `page_views` (1m, by page: count, sum, max,
//!    distinct), `by_type` (1m, by event type and country: count, sum,
//!    distinct) and `revenue` (1h, by country: count, sum, max, distinct),
//!    each day at every roll-up level, in a `file://` store, with manifests
//!    whose cut is the hour the history ends.
//! 2. A private Tansu broker and Redis; `tally speed` and `tally serve`
//!    (`TALLY_BIN`, a release build) on those views and that store, the
//!    answer cache off; `tally-gen` load at `BENCH_RATE` events/s.
//!    `BENCH_REDIS=cluster` puts the speed side in a private 3-master Redis
//!    Cluster instead (16 partition groups, issue 16), with one `tally
//!    speed` and one `tally serve` as before.
//! 3. `BENCH_QUERIES` random queries (seeded): a view, a range of 1 hour to
//!    90 days (log-uniform; most end now), a granularity giving 12 to 1,000
//!    buckets, a grouping, sometimes filters, all or some measures.
//! 4. Tally: one warm-up pass, then `BENCH_ROUNDS` timed passes one query at
//!    a time, and one pass with `BENCH_CONNS` clients at once.
//! 5. DuckDB (`serving/bench/mix_duckdb.py`): the same queries over the same
//!    files and the same level plan (the pieces Tally reads), with the same
//!    warm-up and rounds, while the load still runs.
//!
//! Prints p50/p90/p99 per pass and the ratio of the medians.

#[path = "../../tests/common/mod.rs"]
mod common;
mod history;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::local::LocalFileSystem;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_core::time::{Granularity, MS_PER_DAY};
use tally_core::view::ViewDef;
use tally_serving::query::plan;
use tally_store::manifest::Manifest;
use tally_store::snapshot::columns;
use tally_testkit::config::{TestConfig, TOPIC};
use tally_testkit::gen::{produce, Generator, ProduceOptions, Shape};
use tally_testkit::{kafka, Broker, Redis, RedisCluster};
use tokio_util::sync::CancellationToken;

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
dimensions = ["event_type", "properties.country"]
granularity = "1m"
measures = [
  { name = "events", agg = "count" },
  { name = "amount", agg = "sum", field = "properties.amount" },
  { name = "users", agg = "distinct", field = "user_id" },
]
[[view]]
name = "revenue"
filter = { event_type = ["purchase"] }
dimensions = ["properties.country"]
granularity = "1h"
measures = [
  { name = "orders", agg = "count" },
  { name = "amount", agg = "sum", field = "properties.amount" },
  { name = "biggest", agg = "max", field = "properties.amount" },
  { name = "buyers", agg = "distinct", field = "user_id" },
]
"#;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One query: the URL for Tally, the plan for DuckDB.
fn random_query(
    rng: &mut StdRng,
    views: &[ViewDef],
    manifests: &[Manifest],
    now: i64,
) -> serde_json::Value {
    let vi = rng.gen_range(0..views.len());
    let (view, manifest) = (
        &views[vi],
        manifests[vi]
            .clone()
            .into_current(views[vi].granularity.as_ms()),
    );
    let len = (3_600_000f64 * (90.0 * 24.0f64).powf(rng.gen::<f64>())) as i64;
    let base = view.granularity.as_ms();
    let grans: Vec<Granularity> = ["1m", "5m", "15m", "1h", "6h", "1d"]
        .iter()
        .map(|g| g.parse().expect("granularity"))
        .filter(|g: &Granularity| g.as_ms() % base == 0)
        .filter(|g| (12..=1000).contains(&(len / g.as_ms())))
        .collect();
    let gran = grans
        .get(rng.gen_range(0..grans.len().max(1)))
        .copied()
        .unwrap_or(Granularity::DAY);
    let g = gran.as_ms();
    let to = if rng.gen_bool(0.7) {
        (now / g + 1) * g
    } else {
        now - rng.gen_range(0..60 * MS_PER_DAY)
    };
    let from = to - len;
    let dims: Vec<String> = view.dimensions.iter().map(|d| d.as_string()).collect();
    let group_by: Vec<String> = dims.iter().filter(|_| rng.gen_bool(0.5)).cloned().collect();
    let mut filters: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if rng.gen_bool(0.3) {
        let groups = history::groups(view);
        for _ in 0..rng.gen_range(1..3) {
            let (grp, _) = &groups[rng.gen_range(0..groups.len().min(10))];
            let d = rng.gen_range(0..dims.len());
            if let Some(v) = &grp[d] {
                filters.entry(dims[d].clone()).or_default().push(v.clone());
            }
        }
    }
    let measures: Vec<&tally_core::view::MeasureDef> = if rng.gen_bool(0.5) {
        view.measures.iter().collect()
    } else {
        let pick: Vec<_> = view.measures.iter().filter(|_| rng.gen_bool(0.5)).collect();
        if pick.is_empty() {
            vec![&view.measures[0]]
        } else {
            pick
        }
    };
    let mut url = format!(
        "/api/v1/views/{}/query?from={from}&to={to}&granularity={gran}",
        view.name
    );
    if !group_by.is_empty() {
        url += &format!("&group_by={}", group_by.join(","));
    }
    for (d, vs) in &filters {
        for v in vs {
            url += &format!("&filter={d}:{}", v.replace('/', "%2F"));
        }
    }
    url += &format!(
        "&measures={}",
        measures
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    // The level plan Tally reads: per day, the coarsest level per span.
    let (a, b) = plan::base_range(base, from, to);
    // Per level: the day files to read and the spans they answer.
    type Reads = (Vec<String>, Vec<(i64, i64)>);
    let mut by_level: BTreeMap<i64, Reads> = BTreeMap::new();
    let levels: Vec<i64> = manifest.levels_ms.clone();
    for day in a.div_euclid(MS_PER_DAY)..=(b - 1).div_euclid(MS_PER_DAY) {
        let (da, db) = (a.max(day * MS_PER_DAY), b.min((day + 1) * MS_PER_DAY));
        for (l, pa, pb) in plan::pieces(&levels, g, da, db) {
            let Some(file) = manifest
                .days
                .iter()
                .find(|d| d.day == day && d.level_ms == Some(l))
            else {
                continue;
            };
            let e = by_level.entry(l).or_default();
            e.0.push(file.path.clone());
            e.1.push((pa, pb));
        }
    }
    serde_json::json!({
        "url": url,
        "g": g,
        "group_by": group_by.iter().map(|d| format!("d:{d}")).collect::<Vec<_>>(),
        "filters": filters.iter().map(|(d, v)| (format!("d:{d}"), v.clone())).collect::<BTreeMap<_, _>>(),
        "measures": measures.iter().map(|m| serde_json::json!({
            "name": m.name, "agg": m.agg.name(), "columns": columns::measure(m)
        })).collect::<Vec<_>>(),
        "levels": by_level.into_values().map(|(files, spans)| serde_json::json!({
            "files": files, "spans": spans
        })).collect::<Vec<_>>(),
    })
}

/// A keep-alive HTTP/1.1 client for GETs whose answers carry a length.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    body_at: usize,
}

impl Client {
    fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: Vec::new(),
            body_at: 0,
        }
    }

    /// The body of the last answer.
    fn body(&self) -> &[u8] {
        &self.buf[self.body_at..]
    }

    /// GET `path`; returns the status code.
    fn get(&mut self, path: &str) -> u16 {
        let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
        self.stream.write_all(req.as_bytes()).expect("write");
        self.buf.clear();
        let mut chunk = [0u8; 65536];
        loop {
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if self.buf.len() >= end + 4 + len {
                self.body_at = end + 4;
                return head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(label: &str, mut ms: Vec<f64>, wall: f64) -> f64 {
    ms.sort_by(f64::total_cmp);
    let p50 = percentile(&ms, 0.5);
    println!(
        "[mix] {label}: {} queries, p50 {p50:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {:.0} queries/s",
        ms.len(),
        percentile(&ms, 0.9),
        percentile(&ms, 0.99),
        ms[ms.len() - 1],
        ms.len() as f64 / wall
    );
    p50
}

/// One pass of `urls` on one connection: per-query milliseconds.
fn pass(addr: &str, urls: &[String]) -> (Vec<f64>, f64) {
    let mut c = Client::connect(addr);
    let started = Instant::now();
    let ms = urls
        .iter()
        .map(|u| {
            let t = Instant::now();
            let status = c.get(u);
            assert_eq!(status, 200, "{u}");
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    (ms, started.elapsed().as_secs_f64())
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let days: i64 = env_or("BENCH_DAYS", 90);
    let n_queries: usize = env_or("BENCH_QUERIES", 300);
    let rate: f64 = env_or("BENCH_RATE", 20_000.0);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let conns: usize = env_or("BENCH_CONNS", 4);
    let tally = std::env::var("TALLY_BIN").expect("TALLY_BIN: a release build of `tally`");
    let dir = std::path::PathBuf::from(
        std::env::var("BENCH_DIR").expect("BENCH_DIR: where the history is kept"),
    );
    std::fs::create_dir_all(dir.join("store")).expect("dir");
    let store = LocalFileSystem::new_with_prefix(dir.join("store")).expect("store");
    let views: Vec<ViewDef> = TestConfig::new().views(VIEWS).build().views;
    let manifests = rt.block_on(history::history(&store, &dir, &views, days));

    let broker = Broker::start().expect("broker");
    let cluster = std::env::var("BENCH_REDIS").is_ok_and(|m| m == "cluster");
    // Either server lives until the end of main.
    let (redis_url, redis_lines, _redis): (String, String, Box<dyn std::any::Any>) = if cluster {
        let c = RedisCluster::start(3, 0).expect("redis cluster");
        // `redis.url` is not read in cluster mode; it must still be a URL.
        (c.seeds()[0].clone(), c.config_lines(16), Box::new(c))
    } else {
        let r = Redis::start().expect("redis");
        (r.url(), String::new(), Box::new(r))
    };
    kafka::create_topic(&broker.bootstrap(), TOPIC, 4).expect("topic");
    kafka::create_topic(&broker.bootstrap(), "dead", 1).expect("dead-letter topic");
    let port = tally_testkit::free_port().expect("port");
    let cfg = TestConfig::new()
        .brokers(&broker.bootstrap())
        .redis(&redis_url)
        .redis_lines(&redis_lines)
        .store(&format!("file://{}", dir.join("store").display()))
        .group("mix")
        .extra(&format!("[serve]\nlisten = \"127.0.0.1:{port}\"\n"))
        .views(VIEWS);
    let logs = tempfile::Builder::new()
        .prefix("mix-")
        .tempdir()
        .expect("tempdir");
    let config = logs.path().join("tally.toml");
    std::fs::write(&config, cfg.toml()).expect("config");
    let role = |name: &str| {
        let log = std::fs::File::create(logs.path().join(format!("{name}.log"))).expect("log");
        Killed(
            Command::new(&tally)
                .args([name, "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn")
                .env("TALLY_KAFKA__ASSIGNMENT", "all")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start tally"),
        )
    };
    let _speed = role("speed");
    let _serve = role("serve");
    let addr = format!("127.0.0.1:{port}");
    let ready = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(120),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let stop = CancellationToken::new();
    let load = {
        let (stop, kafka_cfg) = (stop.clone(), cfg.build().kafka);
        std::thread::spawn(move || {
            let mut generator = Generator::new(Shape::default(), 7).expect("generator");
            let options = ProduceOptions::new(TOPIC, rate);
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(produce(&kafka_cfg, &mut generator, &options, None, &stop))
                .expect("produce load")
        })
    };
    std::thread::sleep(Duration::from_secs(5));

    let mut rng = StdRng::seed_from_u64(2024);
    let now = now_ms();
    let queries: Vec<serde_json::Value> = (0..n_queries)
        .map(|_| random_query(&mut rng, &views, &manifests, now))
        .collect();
    let urls: Vec<String> = queries
        .iter()
        .map(|q| q["url"].as_str().unwrap_or_default().to_owned())
        .collect();
    let spec = serde_json::json!({"root": dir.join("store"), "rounds": rounds, "queries": queries});
    let spec_path = dir.join("queries.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).expect("json")).expect("spec");

    println!(
        "[mix] {n_queries} distinct queries over {days} days of 3 views; speed load {rate:.0} events/s; Redis: {}",
        if cluster { "3-master cluster, 16 partition groups" } else { "one instance" }
    );
    let _ = pass(&addr, &urls); // warm-up
    let mut tally_p50 = Vec::new();
    for r in 0..rounds {
        let (ms, wall) = pass(&addr, &urls);
        if r == 0 {
            // The slowest queries, to see where the time goes.
            let mut by: Vec<(f64, &String)> = ms.iter().copied().zip(&urls).collect();
            by.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (t, u) in by.iter().take(env_or("BENCH_SLOWEST", 0)) {
                println!("[mix]   {t:.2} ms {u}");
            }
        }
        tally_p50.push(summary(
            &format!("tally round {}, 1 connection", r + 1),
            ms,
            wall,
        ));
    }
    let started = Instant::now();
    let all: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..conns)
            .map(|i| {
                let mut mine = urls.clone();
                mine.rotate_left(i * urls.len() / conns.max(1));
                let addr = addr.clone();
                s.spawn(move || pass(&addr, &mine).0)
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect()
    });
    summary(
        &format!("tally, {conns} connections"),
        all,
        started.elapsed().as_secs_f64(),
    );

    let mut c = Client::connect(&addr);
    c.get("/api/v1/status");
    let status: serde_json::Value =
        serde_json::from_slice(c.body()).unwrap_or(serde_json::Value::Null);
    println!(
        "[mix] day cache after the passes: {:.0} MiB",
        status["day_cache_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64
    );
    let script = std::env::var("BENCH_DUCKDB_SCRIPT")
        .unwrap_or_else(|_| "serving/bench/mix_duckdb.py".into());
    let out = Command::new("python3")
        .arg(&script)
        .arg(&spec_path)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    stop.cancel();
    let report = load.join().expect("load thread");
    tally_p50.sort_by(f64::total_cmp);
    let duck: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("p50 ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    let mut duck = duck;
    duck.sort_by(f64::total_cmp);
    if let (Some(t), Some(d)) = (tally_p50.get(tally_p50.len() / 2), duck.get(duck.len() / 2)) {
        println!(
            "[mix] median p50: tally {t:.2} ms, duckdb {d:.2} ms: tally is {:.1}x faster (load ran at {:.0} events/s)",
            d / t,
            report.rate()
        );
    }
}
