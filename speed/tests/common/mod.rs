//! Shared test support for the speed layer: generated traffic (`tally-gen`),
//! the plain fold that is the truth (`tally_testkit::truth`), and a reader of
//! the Redis layout. Also used by the root package's `tests/speed_crash.rs`.

// Shared by several test binaries, each using a part: `pub` is the
// module's surface to them, not the crate's.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Commands;
use tally_core::config::{Config, Millis};
use tally_core::event::decode;
use tally_core::hll::Hll;
use tally_core::keys::{parse_group, CellMember, CounterField, Keys, Layout, Part, SketchField};
use tally_core::quantile::{Bucket, QuantileSketch};
use tally_speed::delta::{At, Chunk, Folder, Range, Unflushed};
use tally_testkit::config::TestConfig;
use tally_testkit::gen::{Generated, Generator, Shape};
use tally_testkit::kafka::Record;
use tally_testkit::truth::{within_hll_error, within_quantile_error, Truth};
use tally_testkit::{kafka, Broker, Redis};

pub use tally_testkit::config::TOPIC;

/// Kafka time of the first generated event: four hours ago, on the hour, so
/// that speed-layer keys (expiring `retention` after their epoch) are live.
pub fn base_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    now.div_euclid(3_600_000) * 3_600_000 - 4 * 3_600_000
}

/// The config under test: the standard test views (every aggregate).
pub fn config(brokers: &str, redis: &str, group: &str) -> Config {
    test_config(brokers, redis, group).build()
}

/// [`config`] as TOML text, for the `tally` binary.
pub fn config_toml(brokers: &str, redis: &str, group: &str) -> String {
    test_config(brokers, redis, group).toml()
}

fn test_config(brokers: &str, redis: &str, group: &str) -> TestConfig {
    TestConfig::new().brokers(brokers).redis(redis).group(group)
}

/// [`config`] on a Redis Cluster with `groups` partition groups.
pub fn cluster_config(
    brokers: &str,
    cluster: &tally_testkit::RedisCluster,
    groups: u32,
    group: &str,
) -> Config {
    test_config(brokers, "redis://127.0.0.1:1/", group)
        .redis_lines(&cluster.config_lines(groups))
        .build()
}

/// One generated event and the partition the test sends it to.
#[derive(Debug, Clone)]
pub struct Ev {
    pub partition: i32,
    pub g: Generated,
}

/// The traffic of the speed tests: 10 % of events up to two days late, the
/// rest up to 5 s either side of their Kafka time; no malformed records (the
/// dead-letter test adds its own).
pub fn shape() -> Shape {
    Shape {
        pages: 40,
        users: 50_000,
        late_share: 0.1,
        max_late: Millis(2 * 86_400_000),
        out_of_order_share: 0.9,
        max_jitter: Millis(5_000),
        malformed_share: 0.0,
        ..Shape::default()
    }
}

/// `n` events over `partitions`, Kafka time from `start_ms` advancing `step_ms`
/// per event.
pub fn events(seed: u64, n: usize, partitions: i32, start_ms: i64, step_ms: f64) -> Vec<Ev> {
    let mut gen = Generator::new(shape(), seed).expect("speed test shape");
    let mut rng = tally_testkit::gen::Rng::new(seed ^ 0xfeed);
    (0..n)
        .map(|i| Ev {
            partition: rng.below(partitions as u64) as i32,
            g: gen.next(start_ms + (i as f64 * step_ms) as i64),
        })
        .collect()
}

/// The records to produce. (`_offset` is unused: event ids are unique per
/// generator.)
pub fn records(evs: &[Ev], _offset: usize) -> Vec<Record> {
    evs.iter()
        .map(|e| Record {
            partition: e.partition,
            payload: e.g.payload.clone(),
            timestamp_ms: e.g.kafka_ts_ms,
        })
        .collect()
}

/// The truth of the standard views over `evs`, folded without any Tally code.
pub fn fold(evs: &[Ev]) -> Truth {
    fold_with(&TestConfig::new().build(), evs)
}

/// The truth of `cfg`'s views over `evs`.
pub fn fold_with(cfg: &Config, evs: &[Ev]) -> Truth {
    let mut truth = Truth::new(cfg);
    for e in evs {
        truth.add_generated(TOPIC, &e.g);
    }
    truth
}

/// (bucket, group) of a view.
pub type Key = (i64, Vec<Option<String>>);

/// What Redis holds for one (bucket, group) of a view, all slices merged.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub ints: BTreeMap<(String, char), i64>,
    pub floats: BTreeMap<(String, char), f64>,
    pub sketches: HashMap<String, Hll>,
    pub quantiles: HashMap<String, QuantileSketch>,
}

/// The quantiles every test checks a quantile sketch at.
pub const QS: [f64; 6] = [0.0, 0.1, 0.5, 0.9, 0.99, 1.0];

/// The distinct measures of a standard view.
fn distinct_measures(view: &str) -> Vec<String> {
    TestConfig::new()
        .build()
        .view(view)
        .map(|v| {
            v.measures
                .iter()
                .filter(|m| m.agg == tally_core::agg::AggKind::Distinct)
                .map(|m| m.name.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The quantiles measures of a standard view.
fn quantile_measures(view: &str) -> Vec<String> {
    TestConfig::new()
        .build()
        .view(view)
        .map(|v| {
            v.quantile_measures()
                .into_iter()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Read a view back from Redis through the documented key layout.
pub fn read_view(redis_url: &str, prefix: &str, view: &str) -> HashMap<Key, Stored> {
    let mut con = redis::Client::open(redis_url)
        .unwrap()
        .get_connection()
        .unwrap();
    read_view_in(&mut con, &Layout::single(prefix), view)
}

/// A connection to a Redis Cluster through its seed nodes.
pub fn cluster_con(nodes: &[String]) -> redis::cluster::ClusterConnection {
    redis::cluster::ClusterClient::new(nodes.to_vec())
        .and_then(|c| c.get_connection())
        .expect("redis cluster")
}

/// [`read_view`] over every partition group of `layout`, merged.
pub fn read_view_in(
    con: &mut impl redis::ConnectionLike,
    layout: &Layout,
    view: &str,
) -> HashMap<Key, Stored> {
    let mut out: HashMap<Key, Stored> = HashMap::new();
    for keys in layout.all() {
        read_group(con, &keys, view, &mut out);
    }
    out
}

/// Add one partition group's slices of `view` to `out`.
fn read_group(
    con: &mut impl redis::ConnectionLike,
    keys: &Keys,
    view: &str,
    out: &mut HashMap<Key, Stored>,
) {
    let members: Vec<String> = con.zrange(keys.slices(view), 0, -1).unwrap();
    for m in members {
        let (epoch, day) = Keys::parse_slice_member(&m).unwrap();
        let fields: HashMap<String, String> = con.hgetall(keys.counters(view, epoch, day)).unwrap();
        for (f, v) in fields {
            let cf = CounterField::parse(&f).unwrap();
            let s = out
                .entry((cf.bucket_ms, parse_group(cf.group).unwrap()))
                .or_default();
            let k = (cf.measure.to_string(), cf.part.tag());
            match cf.part {
                Part::Count | Part::SumInt | Part::SumCarry => {
                    *s.ints.entry(k).or_default() += v.parse::<i64>().unwrap()
                }
                Part::SumFloat => *s.floats.entry(k).or_default() += v.parse::<f64>().unwrap(),
                Part::Min => {
                    let x: f64 = v.parse().unwrap();
                    let e = s.floats.entry(k).or_insert(x);
                    *e = e.min(x);
                }
                Part::Max => {
                    let x: f64 = v.parse().unwrap();
                    let e = s.floats.entry(k).or_insert(x);
                    *e = e.max(x);
                }
            }
        }
        // Sketches: every cell of the slice, each distinct measure of the view.
        let cells: Vec<String> = con.zrange(keys.cells(view, epoch, day), 0, -1).unwrap();
        let prefix_key = keys.sketch_prefix(view, epoch, day);
        for cell in cells {
            let c = CellMember::parse(&cell).unwrap();
            for measure in distinct_measures(view) {
                let suffix = SketchField::encode(c.bucket_ms, &measure, c.group);
                let bytes: Option<Vec<u8>> = con.get(format!("{prefix_key}{suffix}")).unwrap();
                let Some(bytes) = bytes else { continue };
                let s = out
                    .entry((c.bucket_ms, parse_group(c.group).unwrap()))
                    .or_default();
                s.sketches
                    .entry(measure.to_string())
                    .or_default()
                    .merge(&Hll::from_redis_bytes(&bytes).unwrap());
            }
            // Quantile sketches: a hash of bucket -> count per cell and measure.
            for measure in quantile_measures(view) {
                let suffix = SketchField::encode(c.bucket_ms, &measure, c.group);
                let key = format!("{}{suffix}", keys.quantile_prefix(view, epoch, day));
                let counts: HashMap<String, u64> = con.hgetall(key).unwrap();
                if counts.is_empty() {
                    continue;
                }
                let s = out
                    .entry((c.bucket_ms, parse_group(c.group).unwrap()))
                    .or_default();
                let q = s.quantiles.entry(measure).or_default();
                for (b, n) in counts {
                    q.add_count(Bucket::parse(&b).expect("a bucket field"), n);
                }
            }
        }
    }
}

pub use tally_testkit::truth::redis_pfcount as pfcount;

/// Compare every standard view in Redis with the fold; panics with the
/// first difference.
pub fn assert_exact(redis_url: &str, evs: &[Ev]) {
    assert_exact_with(redis_url, &TestConfig::new().build(), evs)
}

/// [`assert_exact`] for `cfg`'s views (with the standard views' distinct
/// measures).
pub fn assert_exact_with(redis_url: &str, cfg: &Config, evs: &[Ev]) {
    let mut con = redis::Client::open(redis_url)
        .and_then(|c| c.get_connection())
        .expect("redis");
    assert_exact_in(&mut con, &Layout::single("t"), cfg, evs)
}

/// [`assert_exact_with`] over every partition group of `layout` (on a
/// cluster: a cluster connection).
pub fn assert_exact_in(
    con: &mut impl redis::ConnectionLike,
    layout: &Layout,
    cfg: &Config,
    evs: &[Ev],
) {
    let truth = fold_with(cfg, evs);
    for view in &truth.views {
        let name = &view.name;
        let got = read_view_in(con, layout, name);
        assert_eq!(
            got.len(),
            view.cells.len(),
            "{name}: number of (bucket, group)s"
        );
        for ((bucket, group), cells) in &view.cells.map {
            let k = (*bucket, group.clone());
            let s = got
                .get(&k)
                .unwrap_or_else(|| panic!("{name} {k:?} missing"));
            for (m, t) in view.measures.iter().zip(cells) {
                let int = |tag| s.ints.get(&(m.name.clone(), tag)).copied();
                let float = |tag| s.floats.get(&(m.name.clone(), tag)).copied();
                let what = format!("{name}.{} {k:?}", m.name);
                match m.agg.as_str() {
                    "count" => assert_eq!(int('c').unwrap_or(0), t.count as i64, "{what}"),
                    "sum" => {
                        let carry = i128::from(int('j').unwrap_or(0));
                        let sum = i128::from(int('i').unwrap_or(0))
                            + carry * tally_core::keys::SUM_CARRY_UNIT;
                        assert_eq!(sum, t.sum_int, "{what}");
                        let f = float('f').unwrap_or(0.0);
                        assert!(
                            (f - t.sum_float).abs() <= 1e-9 * t.sum_float.abs().max(1.0),
                            "{what}: {f} vs {}",
                            t.sum_float
                        );
                    }
                    "min" => assert_eq!(float('n'), t.min, "{what}"),
                    "max" => assert_eq!(float('x'), t.max, "{what}"),
                    "distinct" => {
                        let est = s.sketches.get(&m.name).map_or(0, Hll::count);
                        assert!(
                            within_hll_error(est, t.distinct.len()),
                            "{what}: {est} vs {}",
                            t.distinct.len()
                        );
                        // The sketch must be the one PFADD of the exact set gives.
                        assert_eq!(est, pfcount(con, &t.distinct), "{what}: vs Redis PFCOUNT");
                    }
                    "quantiles" => {
                        let q = s.quantiles.get(&m.name).cloned().unwrap_or_default();
                        assert_eq!(q.count(), t.count, "{what}: values counted");
                        for p in QS {
                            let (got, want) = (q.quantile(p), t.quantile(p));
                            assert!(
                                match (got, want) {
                                    (Some(g), Some(w)) => within_quantile_error(g, w),
                                    (g, w) => g == w,
                                },
                                "{what}: q{p} {got:?} vs exact {want:?}"
                            );
                        }
                    }
                    other => panic!("unknown agg {other}"),
                }
            }
        }
    }
}

/// A private broker whose topic has `partitions` partitions, and a private
/// Redis.
pub fn services(partitions: i32) -> (Broker, Redis) {
    let broker = Broker::start().unwrap();
    let redis = Redis::start().unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, partitions).unwrap();
    (broker, redis)
}

/// Run the speed layer with `cfg` until Redis's offsets cover every record
/// of `recs` (spread over `partitions`), stop it, and check Redis against
/// the fold of `evs` (the events it must hold by then).
pub fn run_until_counted(
    rt: &tokio::runtime::Runtime,
    cfg: &Config,
    recs: &[Record],
    partitions: i32,
    evs: &[Ev],
    timeout: Duration,
) {
    let speed = start(rt, cfg);
    wait_caught_up(&cfg.redis.url, &ends(recs, partitions), timeout);
    speed.stop(rt);
    assert_exact(&cfg.redis.url, evs);
}

/// The end offset of each partition after producing `recs` to a new topic.
/// (Tansu 0.6 reports a high watermark of the last record batch's base offset
/// plus one, so the tests count instead of asking the broker.)
pub fn ends(recs: &[Record], partitions: i32) -> Vec<i64> {
    let mut e = vec![0i64; partitions as usize];
    for r in recs {
        e[r.partition as usize] += 1;
    }
    e
}

/// Wait until Redis's fenced offsets reach `ends` for every partition.
pub fn wait_caught_up(redis_url: &str, ends: &[i64], timeout: Duration) {
    let mut con = redis::Client::open(redis_url)
        .unwrap()
        .get_connection()
        .unwrap();
    wait_caught_up_in(&mut con, &Layout::single("t"), ends, timeout)
}

/// Every partition's stored offset, over the groups of `layout` (errors
/// read as nothing stored: a cluster failing over).
pub fn stored_offsets(
    con: &mut impl redis::ConnectionLike,
    layout: &Layout,
) -> HashMap<String, i64> {
    let mut stored = HashMap::new();
    for keys in layout.all() {
        let group: HashMap<String, i64> = con.hgetall(keys.offsets()).unwrap_or_default();
        stored.extend(group);
    }
    stored
}

/// [`wait_caught_up`] over every partition group of `layout`.
pub fn wait_caught_up_in(
    con: &mut impl redis::ConnectionLike,
    layout: &Layout,
    ends: &[i64],
    timeout: Duration,
) {
    let start = Instant::now();
    loop {
        let stored = stored_offsets(con, layout);
        let done = ends
            .iter()
            .enumerate()
            .all(|(p, &end)| end == 0 || stored.get(&format!("{TOPIC}/{p}")).copied() == Some(end));
        if done {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "not caught up after {timeout:?}: stored {stored:?}, ends {ends:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running in-process speed layer.
pub struct Running {
    pub token: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<Result<tally_speed::SpeedSummary, tally_speed::SpeedError>>,
}

pub fn start(rt: &tokio::runtime::Runtime, cfg: &Config) -> Running {
    start_with(rt, cfg, Arc::new(object_store::memory::InMemory::new()))
}

/// [`start`] with the batch layer's store (manifests) at `store`.
pub fn start_with(
    rt: &tokio::runtime::Runtime,
    cfg: &Config,
    store: Arc<dyn object_store::ObjectStore>,
) -> Running {
    let token = tokio_util::sync::CancellationToken::new();
    let task = rt.spawn(tally_speed::run(
        Arc::new(cfg.clone()),
        store,
        token.clone(),
    ));
    Running { token, task }
}

impl Running {
    /// Wait for the layer to stop by itself (an error); its result. Panics
    /// if that takes more than a minute.
    pub fn wait(
        self,
        rt: &tokio::runtime::Runtime,
    ) -> Result<tally_speed::SpeedSummary, tally_speed::SpeedError> {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), self.task).await })
            .expect("the speed layer stops by itself")
            .expect("join")
    }

    /// SIGTERM's path: flush, leave the group, return what it did. Panics
    /// if that takes more than a minute (a test must fail, not hang).
    pub fn stop(self, rt: &tokio::runtime::Runtime) -> tally_speed::SpeedSummary {
        self.token.cancel();
        let task = self.task;
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), task).await })
            .expect("the speed layer stops within 60 s")
            .expect("join")
            .expect("speed layer result")
    }
}

/// The events of `evs` folded into one chunk over partitions 0 and 1, whose
/// ranges start at `starts` and cover the events of each partition: what a
/// member applies (a test's own, or another one: a replay, a zombie).
pub fn chunk(folder: &mut Folder, evs: &[Ev], starts: [i64; 2], fresh: bool) -> Chunk {
    let mut delta = Unflushed::default();
    let limits = tally_core::event::Limits::default();
    let mut counts = [0i64; 2];
    for e in evs {
        let offset = starts[e.partition as usize] + counts[e.partition as usize];
        counts[e.partition as usize] += 1;
        if let Ok(event) = decode(&e.g.payload, e.g.kafka_ts_ms, &limits) {
            let at = At {
                topic: TOPIC,
                partition: e.partition,
                offset,
                kafka_ts_ms: e.g.kafka_ts_ms,
            };
            folder.fold(&mut delta, 0, at, &event);
        }
    }
    let (slices, events) = delta.take();
    Chunk {
        generation: 1,
        ranges: (0..2)
            .map(|p| Range {
                topic: TOPIC.into(),
                partition: p,
                start: starts[p as usize],
                end: starts[p as usize] + counts[p as usize],
                fresh,
            })
            .collect(),
        slices,
        events,
    }
}

/// A valid event of type `t` with `properties.amount = amount` (the standard
/// `by_type` view sums it, `daily` keeps its maximum).
pub fn amount_event(id: &str, country: &str, amount: &str, kafka_ts_ms: i64) -> Ev {
    let payload = format!(
        r#"{{"event_id":"{id}","event_type":"purchase","timestamp":{kafka_ts_ms},"user_id":"u-{id}","properties":{{"country":"{country}","amount":{amount}}}}}"#
    );
    Ev {
        partition: 0,
        g: Generated {
            key: id.as_bytes().to_vec(),
            payload: payload.into_bytes(),
            kafka_ts_ms,
            valid: true,
            kind: None,
        },
    }
}
