//! Test fixture: random events, their plain-Rust truth, and the two layers
//! written exactly as the batch and speed layers would (snapshot Parquet +
//! manifest in an in-memory object store; Redis keys per `tally_core::keys`).
// Shared by several test binaries, each using a part: `pub` is the
// module's surface to them, not the crate's.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Decimal128Builder, Float64Builder, Int64Builder, StringBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_core::agg::{Agg, AggKind, Num};
use tally_core::config::Config;
use tally_core::hll::Hll;
use tally_core::keys::{
    group_json, CellMember, CounterField, Keys, Part, SketchField, BORN_FIELD, VERSION_FIELD,
};
use tally_core::time::{day_of, Granularity};
use tally_core::view::ViewDef;
use tally_store::manifest::{DayFile, Manifest, ManifestV2};
use tally_store::snapshot::columns;
use tower::ServiceExt;

pub mod alerting;

pub const EPOCH_MS: i64 = 3_600_000;
/// 2024-01-01T00:00:00Z
pub const T0: i64 = 1_704_067_200_000;
pub const SPAN_MS: i64 = 48 * 3_600_000;

#[derive(Debug, Clone)]
pub struct Ev {
    pub t: i64,
    pub epoch: i64,
    pub page: Option<String>,
    pub country: Option<String>,
    pub duration: Option<Num>,
    pub user: String,
}

impl Ev {
    pub fn group(&self) -> Vec<Option<String>> {
        vec![self.page.clone(), self.country.clone()]
    }
}

pub fn view() -> ViewDef {
    serde_json::from_value(serde_json::json!({
        "name": "pv",
        "dimensions": ["properties.page", "properties.country"],
        "granularity": "1m",
        "measures": [
            {"name": "views", "agg": "count"},
            {"name": "dur", "agg": "sum", "field": "properties.duration"},
            {"name": "longest", "agg": "max", "field": "properties.duration"},
            {"name": "shortest", "agg": "min", "field": "properties.duration"},
            {"name": "users", "agg": "distinct", "field": "user_id"},
            {"name": "lat", "agg": "quantiles", "field": "properties.duration"},
        ]
    }))
    .expect("view")
}

pub const PAGES: [&str; 5] = ["/home", "/a", "/b|x", "/c:1", "/é"];
pub const COUNTRIES: [&str; 3] = ["de", "fr", "us"];

/// Random events over [T0, T0 + 48h), ingest epochs from a Kafka timestamp a
/// little after the event time, and 10 % late ones (up to 30 h late).
pub fn events(seed: u64, n: usize) -> Vec<Ev> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let t = T0 + rng.gen_range(0..SPAN_MS);
            let lag = if rng.gen_bool(0.1) {
                rng.gen_range(0..30 * 3_600_000)
            } else {
                rng.gen_range(0..300_000)
            };
            let duration = match rng.gen_range(0..4) {
                0 => None,
                1 => Some(Num::Float(rng.gen_range(-20..200) as f64 * 0.5)),
                _ => Some(Num::Int(rng.gen_range(-5..500))),
            };
            Ev {
                t,
                epoch: (t + lag).div_euclid(EPOCH_MS),
                page: rng
                    .gen_bool(0.95)
                    .then(|| PAGES[rng.gen_range(0..PAGES.len())].to_owned()),
                country: rng
                    .gen_bool(0.8)
                    .then(|| COUNTRIES[rng.gen_range(0..COUNTRIES.len())].to_owned()),
                duration,
                user: format!("user_{}", rng.gen_range(0..400)),
            }
        })
        .collect()
}

/// The aggregates of one (bucket, group) at the view's granularity, per measure.
fn fold_cell(view: &ViewDef, evs: &[&Ev]) -> Vec<Agg> {
    view.measures
        .iter()
        .map(|m| {
            let mut a = Agg::empty(m.agg);
            for e in evs {
                match m.agg {
                    AggKind::Count => a.add_key(b""),
                    AggKind::Distinct => a.add_key(e.user.as_bytes()),
                    _ => {
                        if let Some(n) = e.duration {
                            a.add_num(n)
                        }
                    }
                }
            }
            a
        })
        .collect()
}

/// (bucket, group).
pub type CellKey = (i64, Vec<Option<String>>);

fn cells<'a>(view: &ViewDef, evs: impl Iterator<Item = &'a Ev>) -> BTreeMap<CellKey, Vec<Agg>> {
    cells_at(view, view.granularity, evs)
}

/// The cells of `evs` at bucket width `level`.
fn cells_at<'a>(
    view: &ViewDef,
    level: Granularity,
    evs: impl Iterator<Item = &'a Ev>,
) -> BTreeMap<CellKey, Vec<Agg>> {
    let mut by: BTreeMap<CellKey, Vec<&Ev>> = BTreeMap::new();
    for e in evs {
        by.entry((level.bucket(e.t), e.group()))
            .or_default()
            .push(e);
    }
    by.into_iter()
        .map(|(k, v)| (k, fold_cell(view, &v)))
        .collect()
}

/// Write the snapshot of the events with epoch < cut, as the batch layer
/// would: every level of the view (`ViewDef::levels`), per the manifest
/// contract (`store/src/snapshot/mod.rs`).
pub async fn publish_snapshot(
    store: &InMemory,
    view: &ViewDef,
    evs: &[Ev],
    cut: i64,
    run_id: &str,
) {
    publish_snapshot_at(store, view, evs, cut, run_id, &view.levels()).await
}

/// [`publish_snapshot`] at the given levels only (the view's own first).
pub async fn publish_snapshot_at(
    store: &InMemory,
    view: &ViewDef,
    evs: &[Ev],
    cut: i64,
    run_id: &str,
    levels: &[Granularity],
) {
    let mut days = Vec::new();
    for &level in levels {
        let snap = cells_at(view, level, evs.iter().filter(|e| e.epoch < cut));
        days.extend(write_level(store, view, &snap, run_id, level).await);
    }
    write_manifest(store, view, run_id, cut, levels, days, evs.len() as u64).await;
}

/// Publish the manifest of a run whose day files are written.
pub async fn write_manifest(
    store: &dyn ObjectStore,
    view: &ViewDef,
    run_id: &str,
    cut: i64,
    levels: &[Granularity],
    days: Vec<DayFile>,
    rows_read: u64,
) {
    let m = Manifest::V2(ManifestV2 {
        view: view.name.clone(),
        run_id: run_id.into(),
        cut,
        definition: view.fingerprint(),
        created_ms: T0 + SPAN_MS,
        levels_ms: levels.iter().map(|l| l.as_ms()).collect(),
        days,
        inputs: vec![],
        rows_read,
        skipped: vec![],
    });
    store
        .put(
            &Path::from(tally_store::paths::manifest(&view.name).as_str()),
            PutPayload::from(serde_json::to_vec(&m).expect("json")),
        )
        .await
        .expect("put manifest");
}

/// `cells` (at any level) rolled up to buckets of `level`, with the monoid.
pub fn roll_up(
    cells: &BTreeMap<CellKey, Vec<Agg>>,
    level: Granularity,
) -> BTreeMap<CellKey, Vec<Agg>> {
    let mut out: BTreeMap<CellKey, Vec<Agg>> = BTreeMap::new();
    for ((bucket, group), aggs) in cells {
        match out.entry((level.bucket(*bucket), group.clone())) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(aggs.clone());
            }
            std::collections::btree_map::Entry::Occupied(mut e) => {
                for (a, b) in e.get_mut().iter_mut().zip(aggs) {
                    a.merge(b);
                }
            }
        }
    }
    out
}

/// The day files of one level: one Parquet file per UTC day of `snap`
/// (cells at that level), per the manifest contract.
pub async fn write_level(
    store: &dyn ObjectStore,
    view: &ViewDef,
    snap: &BTreeMap<CellKey, Vec<Agg>>,
    run_id: &str,
    level: Granularity,
) -> Vec<DayFile> {
    let mut by_day: BTreeMap<i64, Vec<(&CellKey, &Vec<Agg>)>> = BTreeMap::new();
    for (k, v) in snap {
        by_day.entry(day_of(k.0)).or_default().push((k, v));
    }
    let mut days = Vec::new();
    for (day, rows) in by_day {
        let mut fields: Vec<(String, ArrayRef)> = Vec::new();
        let mut b = Int64Builder::new();
        for (k, _) in &rows {
            b.append_value(k.0);
        }
        fields.push((columns::BUCKET.into(), Arc::new(b.finish())));
        for (di, d) in view.dimensions.iter().enumerate() {
            let mut s = StringBuilder::new();
            for (k, _) in &rows {
                s.append_option(k.1[di].as_deref());
            }
            fields.push((columns::dimension(d), Arc::new(s.finish())));
        }
        for (mi, m) in view.measures.iter().enumerate() {
            let names = columns::measure(m);
            match m.agg {
                AggKind::Count => {
                    let mut c = UInt64Builder::new();
                    for (_, a) in &rows {
                        let Agg::Count(n) = a[mi] else { unreachable!() };
                        c.append_value(n);
                    }
                    fields.push((names[0].clone(), Arc::new(c.finish())));
                }
                AggKind::Sum => {
                    let mut i = Decimal128Builder::new()
                        .with_data_type(arrow_schema::DataType::Decimal128(38, 0));
                    let mut f = Float64Builder::new();
                    for (_, a) in &rows {
                        let Agg::Sum { int, float } = a[mi] else {
                            unreachable!()
                        };
                        i.append_value(int);
                        f.append_value(float);
                    }
                    fields.push((names[0].clone(), Arc::new(i.finish())));
                    fields.push((names[1].clone(), Arc::new(f.finish())));
                }
                AggKind::Min | AggKind::Max => {
                    let mut f = Float64Builder::new();
                    for (_, a) in &rows {
                        match &a[mi] {
                            Agg::Min(v) | Agg::Max(v) => f.append_option(*v),
                            _ => unreachable!(),
                        }
                    }
                    fields.push((names[0].clone(), Arc::new(f.finish())));
                }
                AggKind::Distinct => {
                    let mut h = BinaryBuilder::new();
                    for (_, a) in &rows {
                        let Agg::Distinct(s) = &a[mi] else {
                            unreachable!()
                        };
                        h.append_value(s.to_redis_bytes());
                    }
                    fields.push((names[0].clone(), Arc::new(h.finish())));
                }
                AggKind::Quantiles => {
                    let entries: Vec<(Vec<i32>, Vec<u64>)> = rows
                        .iter()
                        .map(|(_, a)| {
                            let Agg::Quantiles(q) = &a[mi] else {
                                unreachable!()
                            };
                            q.by_code().unzip()
                        })
                        .collect();
                    let col = tally_store::snapshot::quantile_array(
                        entries.iter().map(|(b, n)| (b.as_slice(), n.as_slice())),
                    );
                    fields.push((names[0].clone(), Arc::new(col)));
                }
            }
        }
        let batch = RecordBatch::try_from_iter(fields).expect("batch");
        let mut buf = Vec::new();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
        let path = tally_store::paths::snapshot_file(&view.name, run_id, level, day);
        let bytes = buf.len() as u64;
        store
            .put(&Path::from(path.as_str()), PutPayload::from(buf))
            .await
            .expect("put");
        days.push(DayFile {
            day,
            level_ms: Some(level.as_ms()),
            path,
            rows: rows.len() as u64,
            bytes: Some(bytes),
        });
    }
    days
}

/// Write every event's slice into Redis as the speed layer would (all epochs:
/// slices below the cut must be ignored by serving).
/// `HSET` a field unless it holds a lower (higher) number.
const KEEP_LOWER: &str = "local c = redis.call('HGET', KEYS[1], ARGV[1]) \
    if not c or tonumber(ARGV[2]) < tonumber(c) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end";
const KEEP_HIGHER: &str = "local c = redis.call('HGET', KEYS[1], ARGV[1]) \
    if not c or tonumber(ARGV[2]) > tonumber(c) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end";

pub async fn write_speed(redis_url: &str, prefix: &str, view: &ViewDef, evs: &[Ev]) {
    let client = redis::Client::open(redis_url).expect("client");
    // A slice is one pipeline: a big one takes seconds on a loaded machine.
    let patient = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(120)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&patient)
        .await
        .expect("connect");
    write_speed_in(&mut conn, &Keys::new(prefix), view, evs).await
}

/// [`write_speed`] into one partition group's keys (on a cluster: a
/// cluster connection; each pipeline stays within the group's slot).
pub async fn write_speed_in(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    view: &ViewDef,
    evs: &[Ev],
) {
    let mut by_slice: BTreeMap<(i64, i64), Vec<&Ev>> = BTreeMap::new();
    for e in evs {
        by_slice.entry((e.epoch, day_of(e.t))).or_default().push(e);
    }
    // One call is one flush: it takes the next version, and marks every
    // slice and cell it writes with it (published last, as the apply
    // script's atomic call would make it appear).
    let last: Option<u64> = redis::cmd("HGET")
        .arg(keys.version())
        .arg(VERSION_FIELD)
        .query_async(conn)
        .await
        .expect("version");
    let version = last.unwrap_or(0) + 1;
    for ((epoch, day), slice) in by_slice {
        let mut p = redis::pipe();
        let ck = keys.counters(&view.name, epoch, day);
        for ((bucket, group), aggs) in cells(view, slice.into_iter()) {
            let gj = group_json(&group);
            p.cmd("ZADD")
                .arg(keys.cells(&view.name, epoch, day))
                .arg(version)
                .arg(CellMember::encode(bucket, &gj));
            for (m, a) in view.measures.iter().zip(&aggs) {
                match a {
                    Agg::Count(n) => {
                        p.cmd("HINCRBY")
                            .arg(&ck)
                            .arg(CounterField::encode(bucket, &m.name, Part::Count, &gj))
                            .arg(*n);
                    }
                    Agg::Sum { int, float } => {
                        p.cmd("HINCRBY")
                            .arg(&ck)
                            .arg(CounterField::encode(bucket, &m.name, Part::SumInt, &gj))
                            .arg(*int);
                        if *float != 0.0 {
                            p.cmd("HINCRBYFLOAT")
                                .arg(&ck)
                                .arg(CounterField::encode(bucket, &m.name, Part::SumFloat, &gj))
                                .arg(*float);
                        }
                    }
                    // Redis only ever lowers a min and raises a max, as
                    // the apply script does.
                    Agg::Min(Some(v)) => {
                        p.cmd("EVAL")
                            .arg(KEEP_LOWER)
                            .arg(1)
                            .arg(&ck)
                            .arg(CounterField::encode(bucket, &m.name, Part::Min, &gj))
                            .arg(v.to_string());
                    }
                    Agg::Max(Some(v)) => {
                        p.cmd("EVAL")
                            .arg(KEEP_HIGHER)
                            .arg(1)
                            .arg(&ck)
                            .arg(CounterField::encode(bucket, &m.name, Part::Max, &gj))
                            .arg(v.to_string());
                    }
                    Agg::Min(None) | Agg::Max(None) => {}
                    Agg::Distinct(_) => {}
                    Agg::Quantiles(q) => {
                        // A hash of bucket -> count, as the apply script's HINCRBYs leave it.
                        let key = format!(
                            "{}{}",
                            keys.quantile_prefix(&view.name, epoch, day),
                            SketchField::encode(bucket, &m.name, &gj)
                        );
                        for (b, n) in q.buckets() {
                            p.cmd("HINCRBY").arg(&key).arg(b.encode()).arg(n);
                        }
                    }
                }
            }
        }
        // Sketches: PFADD each user of each (bucket, group) for real.
        let mut users: BTreeMap<(i64, Vec<Option<String>>), HashSet<&str>> = BTreeMap::new();
        for e in evs
            .iter()
            .filter(|e| e.epoch == epoch && day_of(e.t) == day)
        {
            users
                .entry((view.granularity.bucket(e.t), e.group()))
                .or_default()
                .insert(&e.user);
        }
        for ((bucket, group), us) in users {
            let suffix = SketchField::encode(bucket, "users", &group_json(&group));
            let key = format!("{}{suffix}", keys.sketch_prefix(&view.name, epoch, day));
            p.cmd("PFADD").arg(&key);
            for u in us {
                p.arg(u);
            }
        }
        p.cmd("ZADD")
            .arg(keys.slices(&view.name))
            .arg((epoch + 1) * EPOCH_MS + 86_400_000)
            .arg(Keys::slice_member(epoch, day));
        p.cmd("HSET")
            .arg(keys.slice_versions(&view.name))
            .arg(Keys::slice_member(epoch, day))
            .arg(version);
        let _: () = p.query_async(conn).await.expect("write slice");
    }
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(keys.version())
        .arg(VERSION_FIELD)
        .arg(version)
        .cmd("HSETNX")
        .arg(keys.version())
        .arg(BORN_FIELD)
        .arg(rand::random::<u32>())
        .query_async(conn)
        .await
        .expect("publish the version");
}

/// Expected answer for a query, folded from the events directly.
#[derive(Debug, Default, Clone)]
pub struct Expect {
    pub count: u64,
    pub sum_int: i128,
    pub sum_float: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub users: HashSet<String>,
    /// Every duration, for exact quantiles.
    pub values: Vec<f64>,
}

impl Expect {
    /// The exact `q`-quantile of the durations: rank `floor(q * (n - 1))`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        let rank = (q * (v.len() as f64 - 1.0)).floor();
        (!v.is_empty()).then(|| v[rank as usize])
    }

    pub fn add(&mut self, e: &Ev) {
        self.count += 1;
        self.users.insert(e.user.clone());
        if let Some(n) = e.duration {
            match n {
                Num::Int(i) => self.sum_int += i128::from(i),
                Num::Float(f) => self.sum_float += f,
            }
            let v = n.as_f64();
            self.values.push(v);
            self.min = Some(self.min.map_or(v, |m| m.min(v)));
            self.max = Some(self.max.map_or(v, |m| m.max(v)));
        }
    }

    pub fn merge(&mut self, o: &Expect) {
        self.count += o.count;
        self.sum_int += o.sum_int;
        self.sum_float += o.sum_float;
        self.min = match (self.min, o.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, o.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.users.extend(o.users.iter().cloned());
        self.values.extend_from_slice(&o.values);
    }
}

#[derive(Debug, Clone)]
pub struct Q {
    pub from: i64,
    pub to: i64,
    pub gran: Granularity,
    pub group_by: Vec<usize>,
    pub filters: Vec<(usize, String)>,
    pub measures: Vec<&'static str>,
}

pub const DIMS: [&str; 2] = ["properties.page", "properties.country"];
pub const MEASURES: [&str; 6] = ["views", "dur", "longest", "shortest", "users", "lat"];

/// The percentiles a quantiles measure answers by default.
pub const DEFAULT_QUANTILES: [(f64, &str); 3] = [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99")];

impl Q {
    pub fn url(&self) -> String {
        let enc = |s: &str| {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        };
        let mut u = format!(
            "/api/v1/views/pv/query?from={}&to={}&granularity={}",
            self.from, self.to, self.gran
        );
        if !self.group_by.is_empty() {
            u += &format!(
                "&group_by={}",
                self.group_by
                    .iter()
                    .map(|&d| DIMS[d])
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        for (d, v) in &self.filters {
            u += &format!("&filter={}", enc(&format!("{}:{v}", DIMS[*d])));
        }
        u += &format!("&measures={}", self.measures.join(","));
        u
    }

    /// (bucket, projected group) → expectation, and per group totals, and grand total.
    pub fn truth(&self, evs: &[Ev]) -> BTreeMap<(i64, Vec<Option<String>>), Expect> {
        let mut out: BTreeMap<(i64, Vec<Option<String>>), Expect> = BTreeMap::new();
        for e in evs {
            // Base bucket start within [from, to).
            let base = 60_000 * e.t.div_euclid(60_000);
            if base < self.from || base >= self.to {
                continue;
            }
            let g = e.group();
            let mut by_dim: HashMap<usize, Vec<&String>> = HashMap::new();
            for (d, v) in &self.filters {
                by_dim.entry(*d).or_default().push(v);
            }
            if !by_dim
                .iter()
                .all(|(d, allowed)| g[*d].as_ref().is_some_and(|v| allowed.contains(&v)))
            {
                continue;
            }
            let key = (
                self.gran.bucket(base),
                self.group_by.iter().map(|&d| g[d].clone()).collect(),
            );
            out.entry(key).or_default().add(e);
        }
        out
    }
}

/// Compare one measure's JSON value with its expectation.
pub fn check_value(measure: &str, got: &serde_json::Value, want: &Expect, ctx: &str) {
    match measure {
        "views" => assert_eq!(got.as_u64(), Some(want.count), "{ctx} views"),
        "dur" => assert_eq!(
            got.as_f64(),
            Some(want.sum_int as f64 + want.sum_float),
            "{ctx} dur"
        ),
        "longest" => assert_eq!(got.as_f64(), want.max, "{ctx} longest"),
        "shortest" => assert_eq!(got.as_f64(), want.min, "{ctx} shortest"),
        "users" => {
            let est = got.as_f64().unwrap_or(-1.0);
            let exact = want.users.len() as f64;
            assert!(
                (est - exact).abs() <= exact * 0.02 + 1.0,
                "{ctx} users: {est} vs {exact}"
            );
        }
        "lat" => {
            for (q, label) in DEFAULT_QUANTILES {
                let v = &got[label];
                match want.quantile(q) {
                    None => assert!(v.is_null(), "{ctx} lat {label}: {got}"),
                    Some(exact) => {
                        assert!(
                            v.as_f64().is_some_and(
                                |v| (v - exact).abs() <= 0.01 * exact.abs() * (1.0 + 1e-9)
                            ),
                            "{ctx} lat {label}: {v} vs exact {exact}"
                        )
                    }
                }
            }
        }
        other => panic!("unknown measure {other}"),
    }
}

pub fn config(redis_url: &str, prefix: &str) -> Config {
    let mut cfg = Config::default();
    cfg.redis.url = redis_url.into();
    cfg.redis.key_prefix = prefix.into();
    cfg.views = vec![view()];
    cfg
}

/// [`config`] over a Redis Cluster split into `groups` partition groups,
/// and a cluster connection to write the speed layer's keys with.
pub async fn cluster_config(
    seeds: Vec<String>,
    prefix: &str,
    groups: u32,
) -> (Config, redis::cluster_async::ClusterConnection) {
    let mut cfg = config("redis://127.0.0.1:1/", prefix);
    cfg.redis.mode = tally_core::config::RedisMode::Cluster;
    cfg.redis.nodes = seeds.clone();
    cfg.redis.partition_groups = Some(groups);
    let con = redis::cluster::ClusterClient::new(seeds)
        .expect("client")
        .get_async_connection()
        .await
        .expect("connect");
    (cfg, con)
}

pub async fn get(app: &axum::Router, uri: &str) -> (StatusCode, serde_json::Value) {
    send(app, Request::get(uri).body(Body::empty()).expect("req")).await
}

pub async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    (status, json)
}

pub fn unused(_: Hll) {}

/// An external tool a test drives (schemathesis, chromium): its path, or
/// `None` after saying why the test is skipped. Outside CI a missing tool
/// skips the test with a clear message; with `CI` set it fails the test, so
/// the CI run can never pass without really running it.
pub fn external_tool(names: &[&str], install_hint: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    assert!(
        !ci,
        "CI is set and none of {names:?} is on PATH: {install_hint} (infra/install does it)"
    );
    eprintln!(
        "SKIPPED: none of {names:?} is on PATH; {install_hint} (infra/install does it). \
         With CI set this test fails instead of skipping."
    );
    None
}

/// Start the real server on a free loopback port; returns its address and a
/// sender that stops it.
pub async fn start_server(
    cfg: Config,
    store: Arc<dyn object_store::ObjectStore>,
    opts: tally_serving::ServeOptions,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tally_serving::ServeError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tally_serving::serve_on(
        listener,
        cfg,
        store,
        opts,
        async move {
            let _ = stopped.await;
        },
    ));
    (addr, stop, server)
}

pub fn random_query(rng: &mut StdRng) -> Q {
    let grans = ["1m", "5m", "15m", "1h", "6h", "1d"];
    let gran: Granularity = grans[rng.gen_range(0..grans.len())].parse().expect("gran");
    // Unaligned bounds too: base buckets starting in [from, to) count.
    let from = T0 - 3_600_000 + rng.gen_range(0..SPAN_MS);
    let to = from + rng.gen_range(1..SPAN_MS);
    let group_by = match rng.gen_range(0..4) {
        0 => vec![],
        1 => vec![0],
        2 => vec![1],
        _ => vec![1, 0],
    };
    let mut filters = Vec::new();
    for _ in 0..rng.gen_range(0..3) {
        if rng.gen_bool(0.5) {
            filters.push((0, PAGES[rng.gen_range(0..PAGES.len())].to_owned()));
        } else {
            filters.push((1, COUNTRIES[rng.gen_range(0..COUNTRIES.len())].to_owned()));
        }
    }
    let mut measures: Vec<&'static str> = MEASURES
        .iter()
        .copied()
        .filter(|_| rng.gen_bool(0.6))
        .collect();
    if measures.is_empty() {
        measures.push("views");
    }
    Q {
        from,
        to,
        gran,
        group_by,
        filters,
        measures,
    }
}

pub fn group_of(series: &serde_json::Value, q: &Q) -> Vec<Option<String>> {
    q.group_by
        .iter()
        .map(|&d| series["group"][DIMS[d]].as_str().map(str::to_owned))
        .collect()
}

/// Compare a response with the truth: every point, every group total, the grand total.
pub fn compare(body: &serde_json::Value, q: &Q, evs: &[Ev]) {
    let truth: BTreeMap<_, _> = q
        .truth(evs)
        .into_iter()
        .filter(|(_, e)| shown(q, e))
        .collect();
    let mut group_totals: BTreeMap<Vec<Option<String>>, Expect> = BTreeMap::new();
    let mut grand = Expect::default();
    for (k, e) in &truth {
        group_totals.entry(k.1.clone()).or_default().merge(e);
        grand.merge(e);
    }
    compare_to(body, q, &truth, &group_totals, &grand);
}

/// Whether a bucket is shown: a requested measure is not its identity.
pub fn shown(q: &Q, e: &Expect) -> bool {
    q.measures.iter().any(|m| match *m {
        "views" => e.count > 0,
        "dur" => e.sum_int != 0 || e.sum_float != 0.0,
        "longest" => e.max.is_some(),
        "shortest" => e.min.is_some(),
        "lat" => !e.values.is_empty(),
        _ => !e.users.is_empty(),
    })
}

/// Compare a response with expected points (only the shown ones), group
/// totals and grand total.
pub fn compare_to(
    body: &serde_json::Value,
    q: &Q,
    truth: &BTreeMap<(i64, Vec<Option<String>>), Expect>,
    group_totals: &BTreeMap<Vec<Option<String>>, Expect>,
    grand: &Expect,
) {
    let ctx = q.url();
    assert_eq!(body["degraded"], serde_json::json!([]), "{ctx}");
    let mut seen = HashSet::new();
    let series = body["series"].as_array().expect("series");
    assert_eq!(
        body["groups_total"].as_u64(),
        Some(group_totals.len() as u64),
        "{ctx}"
    );
    assert_eq!(series.len(), group_totals.len(), "{ctx}");
    for s in series {
        let g = group_of(s, q);
        for p in s["points"].as_array().expect("points") {
            let t = p["t"].as_i64().expect("t");
            let want = truth
                .get(&(t, g.clone()))
                .unwrap_or_else(|| panic!("{ctx}: unexpected point {t} {g:?}"));
            assert!(seen.insert((t, g.clone())), "{ctx}: duplicate point");
            for m in &q.measures {
                check_value(m, &p["values"][*m], want, &format!("{ctx} t={t} g={g:?}"));
            }
        }
        for m in &q.measures {
            check_value(
                m,
                &s["totals"][*m],
                &group_totals[&g],
                &format!("{ctx} totals g={g:?}"),
            );
        }
    }
    assert_eq!(seen.len(), truth.len(), "{ctx}: missing points");
    for m in &q.measures {
        if truth.is_empty() {
            continue;
        }
        check_value(m, &body["totals"][*m], grand, &format!("{ctx} grand total"));
    }
}
