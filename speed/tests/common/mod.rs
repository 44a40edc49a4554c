//! Shared test support for the speed layer: generated traffic, the plain fold
//! that is the truth, and a reader of the Redis layout.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::Commands;
use tally_core::config::Config;
use tally_core::hll::Hll;
use tally_core::keys::{parse_group, CounterField, Keys, Part, SketchField};
use tally_testkit::kafka::Record;

/// Kafka time of the first generated event: four hours ago, on the hour, so
/// that speed-layer keys (expiring `retention` after their epoch) are live.
pub fn base_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    now.div_euclid(3_600_000) * 3_600_000 - 4 * 3_600_000
}
pub const TOPIC: &str = "events";

/// The config under test: two views with every aggregate.
pub fn config(brokers: &str, redis: &str, group: &str) -> Config {
    Config::from_toml(&config_toml(brokers, redis, group)).expect("test config")
}

/// [`config`] as TOML text, for the `tally` binary.
pub fn config_toml(brokers: &str, redis: &str, group: &str) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
topics = ["{TOPIC}"]
group = "{group}"
dead_letter_topic = "dead"
[redis]
url = "{redis}"
key_prefix = "t"
[store]
url = "memory://"
[speed]
flush_interval = "100ms"
[[view]]
name = "page_views"
filter = {{ event_type = ["page_view"] }}
dimensions = ["properties.page"]
granularity = "1m"
measures = [
  {{ name = "views", agg = "count" }},
  {{ name = "duration", agg = "sum", field = "properties.duration" }},
  {{ name = "longest", agg = "max", field = "properties.duration" }},
  {{ name = "shortest", agg = "min", field = "properties.duration" }},
  {{ name = "users", agg = "distinct", field = "user_id" }},
]
[[view]]
name = "by_type"
dimensions = ["event_type", "properties.country"]
granularity = "1h"
measures = [
  {{ name = "events", agg = "count" }},
  {{ name = "amount", agg = "sum", field = "properties.amount" }},
  {{ name = "users", agg = "distinct", field = "user_id" }},
]
"#
    )
}

/// One generated event, as the truth sees it.
#[derive(Debug, Clone)]
pub struct Ev {
    pub partition: i32,
    pub kafka_ts: i64,
    pub time_ms: i64,
    pub event_type: &'static str,
    pub user: String,
    pub page: String,
    pub duration: i64,
    pub country: Option<&'static str>,
    pub amount_cents: i64,
}

impl Ev {
    pub fn json(&self, i: usize) -> String {
        let country = self
            .country
            .map(|c| format!(r#","country":"{c}""#))
            .unwrap_or_default();
        format!(
            r#"{{"event_id":"e{i}","event_type":"{}","timestamp":{},"user_id":"{}","properties":{{"page":"{}","duration":{},"amount":{}.{:02}{country}}}}}"#,
            self.event_type,
            self.time_ms,
            self.user,
            self.page,
            self.duration,
            self.amount_cents / 100,
            self.amount_cents % 100
        )
    }
}

/// `n` events over `partitions`, Kafka time from `start_ms` advancing `step_ms`
/// per event; 10 % of events are up to two days late.
pub fn events(seed: u64, n: usize, partitions: i32, start_ms: i64, step_ms: f64) -> Vec<Ev> {
    let mut rng = StdRng::seed_from_u64(seed);
    let types = [
        "page_view",
        "page_view",
        "page_view",
        "click",
        "signup",
        "purchase",
    ];
    let countries = [Some("de"), Some("fr"), Some("us"), None];
    (0..n)
        .map(|i| {
            let kafka_ts = start_ms + (i as f64 * step_ms) as i64;
            let late = if rng.gen_bool(0.1) {
                rng.gen_range(0..2 * 86_400_000)
            } else {
                rng.gen_range(0..5_000)
            };
            // Skewed pages and users: low numbers are much more common.
            let page = format!("/p{}", (rng.gen_range(0.0f64..1.0).powi(3) * 40.0) as u32);
            let user = format!(
                "u{}",
                (rng.gen_range(0.0f64..1.0).powi(2) * 50_000.0) as u32
            );
            Ev {
                partition: rng.gen_range(0..partitions),
                kafka_ts,
                time_ms: kafka_ts - late,
                event_type: types[rng.gen_range(0..types.len())],
                user,
                page,
                duration: rng.gen_range(0..600),
                country: countries[rng.gen_range(0..countries.len())],
                amount_cents: rng.gen_range(0..100_000),
            }
        })
        .collect()
}

pub fn records(evs: &[Ev], offset: usize) -> Vec<Record> {
    evs.iter()
        .enumerate()
        .map(|(i, e)| Record {
            partition: e.partition,
            payload: e.json(offset + i).into_bytes(),
            timestamp_ms: e.kafka_ts,
        })
        .collect()
}

/// The aggregates of one (bucket, group), computed plainly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Truth {
    pub count: u64,
    pub sum_int: i64,
    pub sum_cents: i64,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub users: HashSet<String>,
}

pub type Key = (i64, Vec<Option<String>>);

/// The truth for `page_views` and `by_type`, folded without any Tally code.
pub fn fold(evs: &[Ev]) -> (HashMap<Key, Truth>, HashMap<Key, Truth>) {
    let mut pv: HashMap<Key, Truth> = HashMap::new();
    let mut bt: HashMap<Key, Truth> = HashMap::new();
    for e in evs {
        if e.event_type == "page_view" {
            let t = pv
                .entry((
                    e.time_ms.div_euclid(60_000) * 60_000,
                    vec![Some(e.page.clone())],
                ))
                .or_default();
            t.count += 1;
            t.sum_int += e.duration;
            t.min = Some(t.min.map_or(e.duration, |m| m.min(e.duration)));
            t.max = Some(t.max.map_or(e.duration, |m| m.max(e.duration)));
            t.users.insert(e.user.clone());
        }
        let g = vec![
            Some(e.event_type.to_string()),
            e.country.map(str::to_string),
        ];
        let t = bt
            .entry((e.time_ms.div_euclid(3_600_000) * 3_600_000, g))
            .or_default();
        t.count += 1;
        t.sum_cents += e.amount_cents;
        t.users.insert(e.user.clone());
    }
    (pv, bt)
}

/// What Redis holds for one (bucket, group) of a view, all slices merged.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub ints: BTreeMap<(String, char), i64>,
    pub floats: BTreeMap<(String, char), f64>,
    pub sketches: HashMap<String, Hll>,
}

/// Read a view back from Redis through the documented key layout.
pub fn read_view(redis_url: &str, prefix: &str, view: &str) -> HashMap<Key, Stored> {
    let mut con = redis::Client::open(redis_url)
        .unwrap()
        .get_connection()
        .unwrap();
    let keys = Keys::new(prefix);
    let members: Vec<String> = con.zrange(keys.slices(view), 0, -1).unwrap();
    let mut out: HashMap<Key, Stored> = HashMap::new();
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
                Part::Count | Part::SumInt => {
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
        let suffixes: Vec<String> = con.smembers(keys.sketch_index(view, epoch, day)).unwrap();
        let prefix_key = keys.sketch_prefix(view, epoch, day);
        for suffix in suffixes {
            let bytes: Vec<u8> = con.get(format!("{prefix_key}{suffix}")).unwrap();
            let sf = SketchField::parse(&suffix).unwrap();
            let s = out
                .entry((sf.bucket_ms, parse_group(sf.group).unwrap()))
                .or_default();
            s.sketches
                .entry(sf.measure.to_string())
                .or_default()
                .merge(&Hll::from_redis_bytes(&bytes).unwrap());
        }
    }
    out
}

fn close_enough(estimate: u64, exact: usize) -> bool {
    (estimate as f64 - exact as f64).abs() <= 2.0 + exact as f64 * 0.02
}

/// Compare both views in Redis with the fold; panics with the first difference.
pub fn assert_exact(redis_url: &str, evs: &[Ev]) {
    let (pv, bt) = fold(evs);
    let got = read_view(redis_url, "t", "page_views");
    assert_eq!(
        got.len(),
        pv.len(),
        "page_views: number of (bucket, group)s"
    );
    for (k, t) in &pv {
        let s = got
            .get(k)
            .unwrap_or_else(|| panic!("page_views {k:?} missing"));
        assert_eq!(
            s.ints.get(&("views".into(), 'c')),
            Some(&(t.count as i64)),
            "views {k:?}"
        );
        assert_eq!(
            s.ints.get(&("duration".into(), 'i')),
            Some(&t.sum_int),
            "duration {k:?}"
        );
        assert_eq!(
            s.floats.get(&("longest".into(), 'x')),
            Some(&(t.max.unwrap() as f64)),
            "longest {k:?}"
        );
        assert_eq!(
            s.floats.get(&("shortest".into(), 'n')),
            Some(&(t.min.unwrap() as f64)),
            "shortest {k:?}"
        );
        let est = s.sketches.get("users").map_or(0, Hll::count);
        assert!(
            close_enough(est, t.users.len()),
            "users {k:?}: {est} vs {}",
            t.users.len()
        );
    }
    let got = read_view(redis_url, "t", "by_type");
    assert_eq!(got.len(), bt.len(), "by_type: number of (bucket, group)s");
    for (k, t) in &bt {
        let s = got
            .get(k)
            .unwrap_or_else(|| panic!("by_type {k:?} missing"));
        assert_eq!(
            s.ints.get(&("events".into(), 'c')),
            Some(&(t.count as i64)),
            "events {k:?}"
        );
        let amount = s.ints.get(&("amount".into(), 'i')).copied().unwrap_or(0) as f64
            + s.floats
                .get(&("amount".into(), 'f'))
                .copied()
                .unwrap_or(0.0);
        let exact = t.sum_cents as f64 / 100.0;
        assert!(
            (amount - exact).abs() <= 1e-6 * exact.max(1.0),
            "amount {k:?}: {amount} vs {exact}"
        );
        let est = s.sketches.get("users").map_or(0, Hll::count);
        assert!(
            close_enough(est, t.users.len()),
            "users {k:?}: {est} vs {}",
            t.users.len()
        );
    }
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
    let start = Instant::now();
    loop {
        let stored: HashMap<String, i64> = con.hgetall("t:off").unwrap_or_default();
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
    pub task: tokio::task::JoinHandle<Result<(), tally_speed::SpeedError>>,
}

pub fn start(rt: &tokio::runtime::Runtime, cfg: &Config) -> Running {
    let token = tokio_util::sync::CancellationToken::new();
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let task = rt.spawn(tally_speed::run(
        Arc::new(cfg.clone()),
        store,
        token.clone(),
    ));
    Running { token, task }
}

impl Running {
    pub fn stop(self, rt: &tokio::runtime::Runtime) {
        self.token.cancel();
        rt.block_on(self.task)
            .expect("join")
            .expect("speed layer result");
    }
}
