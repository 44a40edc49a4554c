//! The whole platform against the plain fold.
//!
//! Real Tansu, real Redis and a `file://` object store; `tally speed`,
//! `tally archive` and `tally serve` run as separate processes. A generator
//! with late (up to a day), out-of-order and malformed events produces in
//! phases. During each phase the speed and archive roles are SIGKILLed and
//! restarted, and `tally batch run` is triggered, at random moments. After each
//! phase the platform settles, and many random queries over HTTP (ranges,
//! granularities, groupings, filters, measures) must answer as the fold over
//! everything produced so far: every count, sum, min and max equal, every
//! distinct within HyperLogLog error.

mod role;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use role::Role;
use tally_core::config::Config;
use tally_core::time::now_ms;
use tally_gen::{produce, Generator, ProduceOptions, Shape};
use tally_testkit::config::{TestConfig, TOPIC};
use tally_testkit::truth::{redis_pfcount, within_hll_error, Cell, Cells, Truth, ViewTruth};
use tally_testkit::{kafka, Broker, Redis};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;
const PHASES: usize = 3;
const PHASE_EVENTS: u64 = 60_000;
const RATE: f64 = 15_000.0;
const QUERIES_PER_SETTLE: usize = 40;
const MAX_LATE_MS: i64 = 86_400_000;

/// Every role of one platform under test.
struct Platform {
    _broker: Broker,
    redis: Redis,
    dir: tempfile::TempDir,
    config: PathBuf,
    cfg: Config,
    api: String,
    speed: Option<Role>,
    archive: Option<Role>,
    serve: Role,
}

/// Speed and archive read every partition in one process each (Tansu does
/// not hand a dead member's partitions on; see the speed layer's notes).
const ENV: &[(&str, &str)] = &[("TALLY_KAFKA__ASSIGNMENT", "all")];

impl Platform {
    fn start() -> Platform {
        let broker = Broker::start().expect("broker");
        let redis = Redis::start().expect("redis");
        kafka::create_topic(&broker.bootstrap(), TOPIC, PARTITIONS).expect("topic");
        kafka::create_topic(&broker.bootstrap(), "dead", 1).expect("dead-letter topic");
        let dir = tempfile::Builder::new()
            .prefix("platform-")
            .tempdir()
            .expect("tempdir");
        let port = tally_testkit::free_port().expect("port");
        let store = format!("file://{}", dir.path().join("store").display());
        let test_cfg = TestConfig::new()
            .brokers(&broker.bootstrap())
            .redis(&redis.url())
            .store(&store)
            .group("platform")
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
[serve]
listen = "127.0.0.1:{port}"
"#
            ));
        let config = dir.path().join("tally.toml");
        std::fs::write(&config, test_cfg.toml()).expect("write config");
        let cfg = test_cfg.build();
        eprintln!("platform logs in {}", dir.path().display());
        let serve = Role::start(&["serve"], &config, &dir.path().join("serve.log"), ENV);
        let mut p = Platform {
            _broker: broker,
            redis,
            config,
            cfg,
            api: format!("http://127.0.0.1:{port}"),
            speed: None,
            archive: None,
            serve,
            dir,
        };
        p.speed = Some(p.role("speed"));
        p.archive = Some(p.role("archive"));
        p
    }

    fn role(&self, name: &str) -> Role {
        Role::start(&[name], &self.config, &self.log(name), ENV)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn kill_and_restart(&mut self, name: &str) {
        let old = match name {
            "speed" => self.speed.take(),
            _ => self.archive.take(),
        };
        if let Some(r) = old {
            r.kill9();
        }
        let fresh = Some(self.role(name));
        match name {
            "speed" => self.speed = fresh,
            _ => self.archive = fresh,
        }
    }

    /// `tally batch run`, to completion (a run that finds the lock held is
    /// a refusal, not a failure).
    fn batch_run(&self) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["batch", "run", "--config"])
            .arg(&self.config)
            .output()
            .expect("run tally batch run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("holds the lock"),
            "tally batch run failed: {stderr}"
        );
    }

    fn get(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        let url = format!("{}{path_and_query}", self.api);
        match ureq::get(&url).call() {
            Ok(resp) => (resp.status(), resp.into_json().expect("JSON body")),
            Err(ureq::Error::Status(code, resp)) => {
                (code, resp.into_json().unwrap_or(serde_json::Value::Null))
            }
            Err(e) => panic!("GET {url}: {e}"),
        }
    }
}

/// A query and how the truth answers it.
#[derive(Debug)]
struct Query<'a> {
    view: &'a ViewTruth,
    from: i64,
    to: i64,
    granularity_ms: i64,
    group_by: Vec<String>,
    filters: Vec<(String, String)>,
    measures: Vec<usize>,
}

impl Query<'_> {
    fn url(&self) -> String {
        let mut u = format!(
            "/api/v1/views/{}/query?from={}&to={}&granularity={}ms",
            self.view.name, self.from, self.to, self.granularity_ms
        );
        if !self.group_by.is_empty() {
            u += &format!("&group_by={}", self.group_by.join(","));
        }
        for (d, v) in &self.filters {
            u += &format!("&filter={}", encode(&format!("{d}:{v}")));
        }
        let names: Vec<&str> = self
            .measures
            .iter()
            .map(|&m| self.view.measures[m].name.as_str())
            .collect();
        u += &format!("&measures={}", names.join(","));
        u
    }

    /// The fold's answer: the view's base buckets starting in `[from, to)`
    /// that pass the filters (values of one dimension OR-ed, dimensions
    /// AND-ed), grouped and rolled up.
    fn truth(&self) -> Cells {
        let base = self.view.cells.range(self.from, self.to);
        let dims = &base.dimensions;
        let mut kept = base.clone();
        kept.map.retain(|(_, group), _| {
            dims.iter().enumerate().all(|(i, d)| {
                let allowed: Vec<&String> = self
                    .filters
                    .iter()
                    .filter(|(fd, _)| fd == d)
                    .map(|(_, v)| v)
                    .collect();
                allowed.is_empty() || group[i].as_ref().is_some_and(|g| allowed.contains(&g))
            })
        });
        let by: Vec<&str> = self.group_by.iter().map(String::as_str).collect();
        kept.group_by(&by).rollup(self.granularity_ms)
    }

    /// A point is shown when one of the requested measures is not its identity.
    fn shown(&self, cells: &[Cell]) -> bool {
        self.measures
            .iter()
            .any(|&m| match self.view.measures[m].agg.as_str() {
                "count" => cells[m].count > 0,
                "sum" => cells[m].sum_int != 0 || cells[m].sum_float != 0.0,
                "min" => cells[m].min.is_some(),
                "max" => cells[m].max.is_some(),
                _ => !cells[m].distinct.is_empty(),
            })
    }

    fn check_value(
        &self,
        m: usize,
        got: &serde_json::Value,
        want: &Cell,
        ctx: &str,
        pf: &mut PfCount,
    ) {
        let measure = &self.view.measures[m];
        let name = &measure.name;
        match measure.agg.as_str() {
            "count" => assert_eq!(got.as_u64(), Some(want.count), "{ctx} {name}"),
            "sum" => {
                let exact = want.sum_int as f64 + want.sum_float;
                let got = got.as_f64().unwrap_or(f64::NAN);
                if want.sum_float == 0.0 {
                    assert_eq!(got, exact, "{ctx} {name}");
                } else {
                    // Float sums: the order of additions differs.
                    assert!(
                        (got - exact).abs() <= 1e-6 * exact.abs().max(1.0),
                        "{ctx} {name}: {got} vs {exact}"
                    );
                }
            }
            "min" => assert_eq!(got.as_f64(), want.min, "{ctx} {name}"),
            "max" => assert_eq!(got.as_f64(), want.max, "{ctx} {name}"),
            _ => {
                let est = got.as_u64().unwrap_or(u64::MAX);
                assert!(
                    within_hll_error(est, want.distinct.len()),
                    "{ctx} {name}: estimate {est}, exact {}",
                    want.distinct.len()
                );
                // Sharper: the sketches merged across layers must be the
                // sketch of the union, so the estimate is the one Redis
                // itself gives for the exact set.
                assert_eq!(
                    est,
                    pf.count(&want.distinct),
                    "{ctx} {name}: vs Redis PFCOUNT of the exact set"
                );
            }
        }
    }

    /// Compare a response with the fold: every point and every group's totals.
    fn compare(&self, body: &serde_json::Value, pf: &mut PfCount) {
        let ctx = self.url();
        assert_eq!(body["degraded"], serde_json::json!([]), "{ctx}: {body}");
        let truth: BTreeMap<_, _> = self
            .truth()
            .map
            .into_iter()
            .filter(|(_, c)| self.shown(c))
            .collect();
        let mut totals: BTreeMap<Vec<Option<String>>, Vec<Cell>> = BTreeMap::new();
        for ((_, g), cells) in &truth {
            match totals.get_mut(g) {
                Some(acc) => acc.iter_mut().zip(cells).for_each(|(a, c)| a.merge(c)),
                None => {
                    totals.insert(g.clone(), cells.clone());
                }
            }
        }
        let series = body["series"]
            .as_array()
            .unwrap_or_else(|| panic!("{ctx}: no series in {body}"));
        assert_eq!(series.len(), totals.len(), "{ctx}: groups");
        let mut seen = HashSet::new();
        for s in series {
            let g: Vec<Option<String>> = self
                .group_by
                .iter()
                .map(|d| s["group"][d].as_str().map(str::to_owned))
                .collect();
            for p in s["points"].as_array().expect("points") {
                let t = p["t"].as_i64().expect("t");
                let want = truth
                    .get(&(t, g.clone()))
                    .unwrap_or_else(|| panic!("{ctx}: point {t} {g:?} is not in the fold"));
                assert!(seen.insert((t, g.clone())), "{ctx}: point {t} {g:?} twice");
                for &m in &self.measures {
                    let name = &self.view.measures[m].name;
                    self.check_value(
                        m,
                        &p["values"][name],
                        &want[m],
                        &format!("{ctx} t={t} g={g:?}"),
                        pf,
                    );
                }
            }
            let want = totals
                .get(&g)
                .unwrap_or_else(|| panic!("{ctx}: group {g:?} is not in the fold"));
            for &m in &self.measures {
                let name = &self.view.measures[m].name;
                self.check_value(
                    m,
                    &s["totals"][name],
                    &want[m],
                    &format!("{ctx} totals g={g:?}"),
                    pf,
                );
            }
        }
        assert_eq!(seen.len(), truth.len(), "{ctx}: points missing");
    }
}

/// Redis's own estimate of an exact set: `PFADD` into a scratch key, `PFCOUNT`.
struct PfCount {
    con: redis::Connection,
}

impl PfCount {
    fn connect(url: &str) -> PfCount {
        let con = redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .expect("redis for PFCOUNT");
        PfCount { con }
    }

    fn count(&mut self, set: &HashSet<String>) -> u64 {
        redis_pfcount(&mut self.con, set)
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A random query over `[start - 1 day - 1 h, now + 1 h)`, where every event is.
fn random_query<'a>(rng: &mut StdRng, truth: &'a Truth, start_ms: i64, now_ms: i64) -> Query<'a> {
    let view = &truth.views[rng.gen_range(0..truth.views.len())];
    let g = view.cells.granularity_ms;
    let multiples: Vec<i64> = [1, 2, 5, 15, 60, 360, 1440]
        .into_iter()
        .filter(|k| 86_400_000 % (g * k) == 0)
        .collect();
    let granularity_ms = g * multiples[rng.gen_range(0..multiples.len())];
    let lo = start_ms - MAX_LATE_MS - 3_600_000;
    let hi = now_ms + 3_600_000;
    let (from, to) = if rng.gen_bool(0.2) {
        (lo, hi)
    } else {
        let from = rng.gen_range(lo..hi);
        let to = rng.gen_range(from + 1..=hi);
        if rng.gen_bool(0.5) {
            // Aligned to the granularity, as dashboards ask.
            (from.div_euclid(granularity_ms) * granularity_ms, to)
        } else {
            (from, to)
        }
    };
    let dims = &view.cells.dimensions;
    let group_by: Vec<String> = dims.iter().filter(|_| rng.gen_bool(0.5)).cloned().collect();
    let mut filters = Vec::new();
    if !dims.is_empty() && rng.gen_bool(0.4) {
        // Filter on values that occur (and sometimes one that does not).
        let d = rng.gen_range(0..dims.len());
        let values: Vec<&String> = view
            .cells
            .map
            .keys()
            .filter_map(|(_, g)| g[d].as_ref())
            .collect();
        for _ in 0..rng.gen_range(1..=2) {
            let v = if values.is_empty() || rng.gen_bool(0.1) {
                "no-such-value".to_owned()
            } else {
                values[rng.gen_range(0..values.len())].clone()
            };
            filters.push((dims[d].clone(), v));
        }
    }
    let mut measures: Vec<usize> = (0..view.measures.len())
        .filter(|_| rng.gen_bool(0.6))
        .collect();
    if measures.is_empty() {
        measures.push(0);
    }
    Query {
        view,
        from,
        to,
        granularity_ms,
        group_by,
        filters,
        measures,
    }
}

/// Wait until the API's all-time event count (the `daily` view, which
/// counts every accepted event) equals the fold's.
fn settle(p: &Platform, truth: &Truth, timeout: Duration) {
    let want = truth.accepted;
    let from = now_ms() - 3 * 86_400_000;
    let to = now_ms() + 2 * 3_600_000;
    let deadline = Instant::now() + timeout;
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        let (code, body) = p.get(&format!(
            "/api/v1/views/daily/query?from={from}&to={to}&granularity=1d&measures=events"
        ));
        if code == 200 {
            let got: u64 = body["series"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["totals"]["events"].as_u64())
                .sum();
            if got == want {
                return;
            }
            last = serde_json::json!({"got": got, "want": want});
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!(
        "the platform did not settle within {timeout:?}: {last}; logs in {}",
        p.dir.path().display()
    );
}

#[test]
fn the_platform_answers_as_the_fold_through_crashes_late_events_and_batch_runs() {
    let mut p = Platform::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut rng = StdRng::seed_from_u64(2026);
    let mut shape = Shape::default().with_limits(p.cfg.events.limits());
    shape.late_share = 0.05;
    shape.max_late = tally_core::config::Millis(MAX_LATE_MS);
    shape.out_of_order_share = 0.2;
    shape.malformed_share = 0.01;
    shape.check().expect("shape");
    let mut generator = Generator::new(shape, 99).expect("generator");
    let mut truth = Truth::new(&p.cfg);
    let start_ms = now_ms();
    let (mut kills, mut batch_runs) = ((0, 0), 0);
    let mut step = rng.gen_range(0..3usize);

    let kafka_cfg = p.cfg.kafka.clone();
    let mut pf = PfCount::connect(&p.redis.url());
    for phase in 0..PHASES {
        let mut options = ProduceOptions::new(TOPIC, RATE);
        options.count = Some(PHASE_EVENTS);
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let producer = s.spawn(|| {
                let mut fold = |g: &tally_gen::Generated| {
                    truth.add_generated(TOPIC, g);
                };
                let report = rt
                    .block_on(produce(
                        &kafka_cfg,
                        &mut generator,
                        &options,
                        Some(&mut fold),
                        &CancellationToken::new(),
                    ))
                    .expect("produce");
                assert_eq!(report.failed, 0, "{report:?}");
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            // Chaos while producing: kill a role or run the batch.
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
                // Each kind of chaos in turn, at random moments.
                step += 1;
                match step % 3 {
                    0 => {
                        p.kill_and_restart("speed");
                        kills.0 += 1;
                    }
                    1 => {
                        p.kill_and_restart("archive");
                        kills.1 += 1;
                    }
                    _ => {
                        p.batch_run();
                        batch_runs += 1;
                    }
                }
            }
            producer.join().expect("producer thread");
        });
        if phase + 1 == PHASES {
            // The last settle point follows a batch run over (nearly) everything.
            std::thread::sleep(Duration::from_secs(5));
            p.batch_run();
            batch_runs += 1;
        }
        settle(&p, &truth, Duration::from_secs(180));
        let now = now_ms();
        for _ in 0..QUERIES_PER_SETTLE {
            let q = random_query(&mut rng, &truth, start_ms, now);
            let (code, body) = p.get(&q.url());
            assert_eq!(code, 200, "{}: {body}", q.url());
            q.compare(&body, &mut pf);
        }
        p.speed.as_mut().expect("speed").assert_running();
        p.archive.as_mut().expect("archive").assert_running();
        p.serve.assert_running();
        eprintln!(
            "phase {phase}: {} accepted, {} rejected; kills speed {} archive {}, batch runs {batch_runs}: {QUERIES_PER_SETTLE} queries exact",
            truth.accepted, truth.rejected, kills.0, kills.1
        );
    }

    // The run exercised what it claims to: late events, rejects, crashes
    // and a snapshot that answers part of the queries.
    let oldest = truth
        .view("daily")
        .cells
        .map
        .keys()
        .map(|(b, _)| *b)
        .min()
        .expect("events");
    assert!(
        oldest < start_ms - 6 * 3_600_000,
        "no event was more than six hours late"
    );
    assert!(truth.rejected > 0, "no malformed records were produced");
    assert!(kills.0 >= 2 && kills.1 >= 2, "too few kills: {kills:?}");
    let (_, status) = p.get("/api/v1/status");
    let rows: u64 = status["views"]
        .as_array()
        .expect("views")
        .iter()
        .filter_map(|v| v["snapshot_rows"].as_u64())
        .sum();
    assert!(rows > 0, "no batch snapshot was ever served: {status}");
    p.speed.take().expect("speed").terminate();
    p.archive.take().expect("archive").terminate();
}
