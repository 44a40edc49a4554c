//! Freshness benchmark: produce-to-visible latency through the API while the
//! speed layer carries a steady load.
//!
//! `cargo bench --bench freshness` (env BENCH_RATE, default 100,000 events/s
//! of generated load; BENCH_PROBES, default 300; BENCH_NO_QUANTILES=1 runs
//! the standard views without their quantile measures, to see what those
//! cost; BENCH_REDIS=cluster puts the speed layer in a private 3-master
//! Redis Cluster with 16 partition groups instead of one Redis). Starts Tansu and Redis, `tally speed` and `tally serve` (the
//! release binary), produces the load with `tally-gen`, and meanwhile sends
//! probe events one at a time, each with a page of its own, timing from the
//! send until `GET …/query` on a `probes` view counts it (polled from the
//! send on). Prints p50/p90/p99/max and the share seen within 1 s, the
//! broker's part (the send until the probe's acknowledgement), Tally's
//! (the acknowledgement until visible, per probe), and,
//! for the time the probes ran, what the speed layer applied, how far behind
//! the broker it ended, and Redis's CPU time per event applied (where a run
//! that misses the target shows why).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tally_core::keys::Keys;
use tally_core::time::now_ms;
use tally_gen::{produce, Generator, ProduceOptions, Shape};
use tally_testkit::config::{TestConfig, STANDARD_VIEWS, TOPIC};
use tally_testkit::{kafka, Broker, Redis, RedisCluster};
use tokio_util::sync::CancellationToken;

const PROBE_VIEW: &str = r#"
[[view]]
name = "probes"
filter = { event_type = ["probe"] }
dimensions = ["properties.page"]
granularity = "1m"
measures = [{ name = "n", agg = "count" }]
"#;

/// Partitions of the load's topic.
const PARTITIONS: i32 = 4;

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

fn role(name: &str, config: &std::path::Path, log: &std::path::Path) -> Killed {
    let log = std::fs::File::create(log).expect("log file");
    Killed(
        Command::new(env!("CARGO_BIN_EXE_tally"))
            .args([name, "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .env("TALLY_KAFKA__ASSIGNMENT", "all")
            .envs(std::env::vars().filter(|(k, _)| k.starts_with("TALLY_")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tally"),
    )
}

/// The probe's count as the API answers it (0 when absent or on error).
fn probe_count(api: &str, page: &str, from: i64, to: i64) -> u64 {
    let url = format!(
        "{api}/api/v1/views/probes/query?from={from}&to={to}&granularity=1d&filter=properties.page:{page}&measures=n"
    );
    let Ok(resp) = ureq::get(&url).call() else {
        return 0;
    };
    let body: serde_json::Value = resp.into_json().unwrap_or_default();
    body["series"][0]["totals"]["n"].as_u64().unwrap_or(0)
}

/// The standard views, without their quantile measures when
/// BENCH_NO_QUANTILES=1.
fn views() -> String {
    if env_or("BENCH_NO_QUANTILES", 0) == 1 {
        STANDARD_VIEWS
            .lines()
            .filter(|l| !l.contains(r#"agg = "quantiles""#))
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        STANDARD_VIEWS.to_string()
    }
}

/// Redis's CPU seconds so far (user and system, summed over the nodes) and
/// the events the speed layer applied so far (the sum of its stored
/// offsets, over the partition groups).
struct Sample {
    redis_cpu_s: f64,
    applied: i64,
    at: Instant,
}

fn sample(nodes: &mut [redis::Connection], offsets: &[String]) -> Sample {
    let mut redis_cpu_s = 0.0;
    for con in nodes.iter_mut() {
        let info: String = redis::cmd("INFO").arg("cpu").query(con).expect("INFO cpu");
        redis_cpu_s += info
            .lines()
            .filter_map(|l| {
                l.strip_prefix("used_cpu_user:")
                    .or_else(|| l.strip_prefix("used_cpu_sys:"))
            })
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum::<f64>();
    }
    // Each group's offsets from the node that holds them (the others
    // answer MOVED).
    let applied = offsets
        .iter()
        .filter_map(|key| {
            nodes.iter_mut().find_map(|con| {
                redis::cmd("HVALS")
                    .arg(key)
                    .query::<Vec<i64>>(con)
                    .ok()
                    .map(|v| v.iter().sum::<i64>())
            })
        })
        .sum();
    Sample {
        redis_cpu_s,
        applied,
        at: Instant::now(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let rate: f64 = env_or("BENCH_RATE", 100_000.0);
    let probes: usize = env_or("BENCH_PROBES", 300);
    let broker = Broker::start().expect("broker");
    let cluster = std::env::var("BENCH_REDIS").is_ok_and(|m| m == "cluster");
    // Either server lives until the end of main. `redis.url` is not read
    // in cluster mode; it must still be a URL.
    let (nodes, redis_lines, _redis): (Vec<String>, String, Box<dyn std::any::Any>) = if cluster {
        let c = RedisCluster::start(3, 0).expect("redis cluster");
        (c.seeds(), c.config_lines(16), Box::new(c))
    } else {
        let r = Redis::start().expect("redis");
        (vec![r.url()], String::new(), Box::new(r))
    };
    kafka::create_topic(&broker.bootstrap(), TOPIC, PARTITIONS).expect("topic");
    kafka::create_topic(&broker.bootstrap(), "dead", 1).expect("dead-letter topic");
    let dir = tempfile::Builder::new()
        .prefix("freshness-")
        .tempdir()
        .expect("tempdir");
    eprintln!(
        "logs in {}; Redis: {}",
        dir.path().display(),
        if cluster {
            "3-master cluster, 16 partition groups"
        } else {
            "one instance"
        }
    );
    let port = tally_testkit::free_port().expect("port");
    let test_cfg = TestConfig::new()
        .brokers(&broker.bootstrap())
        .redis(&nodes[0])
        .redis_lines(&redis_lines)
        .store(&format!("file://{}", dir.path().join("store").display()))
        .group("freshness")
        .extra(&format!("[serve]\nlisten = \"127.0.0.1:{port}\"\n"))
        .views(&format!("{}\n{PROBE_VIEW}", views()));
    let config = dir.path().join("tally.toml");
    std::fs::write(&config, test_cfg.toml()).expect("config");
    let cfg = test_cfg.build();
    let api = format!("http://127.0.0.1:{port}");
    let _speed = role("speed", &config, &dir.path().join("speed.log"));
    let _serve = role("serve", &config, &dir.path().join("serve.log"));
    let ready = Instant::now();
    while ureq::get(&format!("{api}/api/v1/views")).call().is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(60),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The load, in its own thread and runtime.
    let stop = CancellationToken::new();
    let load = {
        let stop = stop.clone();
        let kafka_cfg = cfg.kafka.clone();
        let limits = cfg.events.limits();
        std::thread::spawn(move || {
            let shape = Shape::default().with_limits(limits).clamped_to_limits();
            let mut generator = Generator::new(shape, 1).expect("generator");
            let options = ProduceOptions::new(TOPIC, rate);
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(produce(&kafka_cfg, &mut generator, &options, None, &stop))
                .expect("produce load")
        })
    };
    std::thread::sleep(Duration::from_secs(5)); // reach the steady state

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "0")
        .create()
        .expect("probe producer");
    let (from, to) = (now_ms() - 86_400_000, now_ms() + 86_400_000);
    let offsets: Vec<String> = cfg.redis.layout().all().iter().map(Keys::offsets).collect();
    let mut con: Vec<redis::Connection> = nodes
        .iter()
        .map(|n| {
            redis::Client::open(n.as_str())
                .and_then(|c| c.get_connection())
                .expect("redis")
        })
        .collect();
    let before = sample(&mut con, &offsets);
    let mut latencies = Vec::with_capacity(probes);
    // The broker's part of each latency: the send until its acknowledgement.
    let mut acks = Vec::with_capacity(probes);
    let mut timeouts = 0;
    for i in 0..probes {
        let page = format!("probe-{i}");
        let t = now_ms();
        let payload = format!(
            r#"{{"event_id":"probe-{i}","event_type":"probe","timestamp":{t},"user_id":"bench","properties":{{"page":"{page}"}}}}"#
        );
        let sent = Instant::now();
        producer
            .send(
                BaseRecord::<(), _>::to(TOPIC)
                    .payload(&payload)
                    .timestamp(t),
            )
            .expect("send probe");
        // The API is polled from the send on, and the producer with it:
        // `flush` waited for the acknowledgement in polls of up to 100 ms,
        // which set a floor of 100 ms under every latency. The broker's
        // part is noted when the probe is acknowledged.
        let mut acked = None;
        loop {
            producer.poll(Duration::ZERO);
            if acked.is_none() && producer.in_flight_count() == 0 {
                acked = Some(sent.elapsed());
            }
            if probe_count(&api, &page, from, to) == 1 {
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if sent.elapsed() > Duration::from_secs(30) {
                // Counted as 30 s (the report says how many), then go on:
                // a lagging speed layer shows in the percentiles.
                timeouts += 1;
                latencies.push(30_000.0);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // Visible means delivered; wait for the report if it came later.
        while acked.is_none() && sent.elapsed() < Duration::from_secs(10) {
            producer.poll(Duration::from_millis(1));
            if producer.in_flight_count() == 0 {
                acked = Some(sent.elapsed());
            }
        }
        acks.push(acked.map_or(f64::NAN, |a| a.as_secs_f64() * 1000.0));
        // Progress, so that a run whose speed layer lags shows it long
        // before its last probe.
        if (i + 1) % 20 == 0 {
            eprintln!(
                "{} probes: the last {:.0} ms, {timeouts} not within 30 s",
                i + 1,
                latencies[latencies.len() - 1]
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = sample(&mut con, &offsets);
    let ends: i64 = kafka::high_watermarks(&broker.bootstrap(), TOPIC, PARTITIONS)
        .expect("end offsets")
        .iter()
        .sum();
    let _ = producer.flush(Duration::from_secs(5));
    stop.cancel();
    let report = load.join().expect("load thread");
    let latencies_by_probe = latencies.clone();
    latencies.sort_by(f64::total_cmp);
    let within = latencies.iter().filter(|&&l| l <= 1000.0).count();
    println!(
        "freshness: {probes} probes under a load of {:.0} events/s (target {rate:.0}): p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {within}/{probes} within 1 s, {timeouts} not within 30 s",
        report.rate(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
    // Tally's part: from the acknowledgement (the broker has the probe)
    // until visible, per probe.
    let mut after_ack: Vec<f64> = latencies_by_probe
        .iter()
        .zip(&acks)
        .filter(|(_, a)| a.is_finite())
        .map(|(l, a)| (l - a).max(0.0))
        .collect();
    after_ack.sort_by(f64::total_cmp);
    acks.sort_by(f64::total_cmp);
    println!(
        "of which the broker's acknowledgement of the probe: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&acks, 0.5),
        percentile(&acks, 0.9),
        percentile(&acks, 0.99),
        acks[acks.len() - 1],
    );
    if !after_ack.is_empty() {
        println!(
            "and from the acknowledgement until visible (Tally's part): p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            percentile(&after_ack, 0.5),
            percentile(&after_ack, 0.9),
            percentile(&after_ack, 0.99),
            after_ack[after_ack.len() - 1],
        );
    }
    let applied = after.applied - before.applied;
    println!(
        "while probing: the speed layer applied {:.0} events/s and ended about {} events behind the broker (Tansu reports end offsets per batch); Redis {:.2} CPU-µs per event applied",
        applied as f64 / after.at.duration_since(before.at).as_secs_f64(),
        ends - after.applied,
        (after.redis_cpu_s - before.redis_cpu_s) * 1e6 / applied.max(1) as f64,
    );
}
