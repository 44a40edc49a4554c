//! Shared test support: generated events, archive files written directly, and
//! the truth as a plain fold over the generated events.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use object_store::ObjectStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_batch::archive_file::{self, ArchiveRows};
use tally_core::config::Config;
use tally_core::event::Limits;
use tally_core::manifest::CutFile;
use tally_core::paths;
use tally_core::time::EpochClock;

pub const T0: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z
pub const HOUR: i64 = 3_600_000;

/// One generated record, as the test knows it.
#[derive(Debug, Clone)]
pub struct Gen {
    pub partition: i32,
    pub offset: i64,
    pub kafka_ts: i64,
    pub id: String,
    pub etype: &'static str,
    pub time_ms: i64,
    pub user: String,
    pub page: String,
    /// Integer duration, sometimes absent.
    pub duration: Option<i64>,
    /// A float property.
    pub price: f64,
    /// Not a valid event (not JSON).
    pub invalid: bool,
}

impl Gen {
    pub fn json(&self) -> Vec<u8> {
        if self.invalid {
            return b"{not json".to_vec();
        }
        let mut props = serde_json::json!({"page": self.page, "price": self.price});
        if let Some(d) = self.duration {
            props["duration"] = serde_json::json!(d);
        }
        serde_json::to_vec(&serde_json::json!({
            "event_id": self.id,
            "event_type": self.etype,
            "timestamp": self.time_ms,
            "user_id": self.user,
            "properties": props,
        }))
        .unwrap()
    }

    pub fn epoch(&self) -> i64 {
        self.kafka_ts.div_euclid(HOUR)
    }
}

/// `n` records over `partitions` partitions with Kafka timestamps in
/// `[ts_from, ts_from + span)`, event times up to two days earlier.
pub fn generate(
    seed: u64,
    n: usize,
    partitions: i32,
    next_offsets: &mut Vec<i64>,
    ts_from: i64,
    span: i64,
) -> Vec<Gen> {
    let mut rng = StdRng::seed_from_u64(seed);
    next_offsets.resize(partitions as usize, 0);
    let types = ["page_view", "click", "purchase"];
    (0..n)
        .map(|i| {
            let p = rng.gen_range(0..partitions);
            let offset = next_offsets[p as usize];
            next_offsets[p as usize] += 1;
            let kafka_ts = ts_from + rng.gen_range(0..span);
            let lateness = if rng.gen_bool(0.2) {
                rng.gen_range(0..2 * 86_400_000)
            } else {
                rng.gen_range(0..120_000)
            };
            Gen {
                partition: p,
                offset,
                kafka_ts,
                id: format!("e{seed}-{i}"),
                etype: types[rng.gen_range(0..3)],
                time_ms: kafka_ts - lateness,
                user: format!("u{}", rng.gen_range(0..3000)),
                page: format!("/p{}", rng.gen_range(0..5)),
                duration: rng.gen_bool(0.9).then(|| rng.gen_range(-50..1000)),
                price: (rng.gen_range(0..10_000) as f64) / 4.0,
                invalid: rng.gen_bool(0.01),
            }
        })
        .collect()
}

/// Write `events` as archive files, one per (epoch, partition), each named by
/// its first offset (plus `suffix_offset` to make distinct names when asked).
pub async fn write_archive(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    events: &[Gen],
) -> Vec<String> {
    let clock = EpochClock::new(HOUR);
    let limits = Limits::default();
    let mut files: BTreeMap<(i64, i32), ArchiveRows> = BTreeMap::new();
    let mut sorted: Vec<&Gen> = events.iter().collect();
    sorted.sort_by_key(|g| (g.partition, g.offset));
    for g in sorted {
        let rows = files
            .entry((g.epoch(), g.partition))
            .or_insert_with(|| ArchiveRows::new(g.offset));
        rows.push(
            topic,
            g.partition,
            g.offset,
            g.kafka_ts,
            clock,
            &limits,
            &g.json(),
        );
    }
    let mut paths_out = Vec::new();
    for ((epoch, p), mut rows) in files {
        let path = paths::archive_file(epoch, topic, p, rows.first_offset);
        archive_file::write(store.clone(), &path, &mut rows)
            .await
            .unwrap();
        paths_out.push(path);
    }
    paths_out
}

pub async fn set_cut(store: &Arc<dyn ObjectStore>, cut: i64) {
    tally_batch::store::put_json(
        store.as_ref(),
        paths::CUT,
        &CutFile::V1 { cut, decided_ms: 0 },
    )
    .await
    .unwrap();
}

pub fn config(store_url: &str) -> Config {
    config_at(store_url, None)
}

/// The test views, with the store at `store_url` (and an S3 endpoint).
pub fn config_at(store_url: &str, s3_endpoint: Option<&str>) -> Config {
    let mut cfg = Config::from_toml(&format!(
        r#"
        [store]
        url = "{store_url}"
        [batch]
        gc_grace = "0ms"
        [[view]]
        name = "pages"
        topics = ["events"]
        filter = {{ event_type = ["page_view"] }}
        dimensions = ["properties.page"]
        granularity = "1m"
        measures = [
          {{ name = "views", agg = "count" }},
          {{ name = "duration", agg = "sum", field = "properties.duration" }},
          {{ name = "shortest", agg = "min", field = "properties.duration" }},
          {{ name = "longest", agg = "max", field = "properties.duration" }},
          {{ name = "users", agg = "distinct", field = "user_id" }},
        ]
        [[view]]
        name = "types"
        dimensions = ["event_type"]
        granularity = "1h"
        measures = [
          {{ name = "events", agg = "count" }},
          {{ name = "revenue", agg = "sum", field = "properties.price" }},
          {{ name = "users", agg = "distinct", field = "user_id" }},
        ]
        [[view]]
        name = "daily"
        granularity = "1d"
        measures = [
          {{ name = "events", agg = "count" }},
          {{ name = "timed", agg = "count", field = "properties.duration" }},
          {{ name = "top", agg = "max", field = "properties.price" }},
        ]
        "#
    ))
    .unwrap();
    if let Some(e) = s3_endpoint {
        cfg.store.s3_endpoint = Some(e.to_owned());
        cfg.store.s3_region = Some("us-east-1".into());
    }
    cfg
}

/// Truth for one (bucket, group): the plain values.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    pub count: u64,
    pub count_field: u64,
    pub sum_int: i64,
    pub sum_float: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub users: HashSet<String>,
}

fn bump(t: &mut Truth, num: Option<f64>) {
    if let Some(v) = num {
        t.min = Some(t.min.map_or(v, |m: f64| m.min(v)));
        t.max = Some(t.max.map_or(v, |m: f64| m.max(v)));
    }
}

/// The truth of a view over the valid events of epochs below `cut`,
/// de-duplicated by coordinates. Keys: (bucket, group).
pub fn truth(view: &str, events: &[Gen], cut: i64) -> BTreeMap<(i64, Vec<Option<String>>), Truth> {
    let mut seen = HashSet::new();
    let mut out: BTreeMap<(i64, Vec<Option<String>>), Truth> = BTreeMap::new();
    for g in events {
        if g.invalid || g.epoch() >= cut || !seen.insert((g.partition, g.offset)) {
            continue;
        }
        match view {
            "pages" => {
                if g.etype != "page_view" {
                    continue;
                }
                let b = g.time_ms.div_euclid(60_000) * 60_000;
                let t = out.entry((b, vec![Some(g.page.clone())])).or_default();
                t.count += 1;
                if let Some(d) = g.duration {
                    t.sum_int += d;
                }
                bump(t, g.duration.map(|d| d as f64));
                t.users.insert(g.user.clone());
            }
            "types" => {
                let b = g.time_ms.div_euclid(HOUR) * HOUR;
                let t = out.entry((b, vec![Some(g.etype.to_string())])).or_default();
                t.count += 1;
                t.sum_float += g.price;
                t.users.insert(g.user.clone());
            }
            "daily" => {
                let b = g.time_ms.div_euclid(86_400_000) * 86_400_000;
                let t = out.entry((b, vec![])).or_default();
                t.count += 1;
                if g.duration.is_some() {
                    t.count_field += 1;
                }
                bump(t, Some(g.price));
            }
            _ => unreachable!(),
        }
    }
    out
}

/// A private moto S3 server (from PyPI) on a free port, killed on drop.
#[derive(Debug)]
pub struct S3Server {
    child: std::process::Child,
    pub endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// Start `moto_server` (or `$TALLY_MOTO_SERVER`) and create `bucket`.
    /// `None` when moto is not installed.
    pub fn start(bucket: &str) -> Option<S3Server> {
        use std::io::{Read, Write};
        let bin = std::env::var("TALLY_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = tally_testkit::free_port().ok()?;
        let child = std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let req = format!(
                    "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                if s.write_all(req.as_bytes()).is_ok() {
                    let mut resp = String::new();
                    let _ = s.read_to_string(&mut resp);
                    if resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200") {
                        break;
                    }
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Credentials for the S3 client: moto accepts any.
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        Some(server)
    }
}
