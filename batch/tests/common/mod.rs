//! Shared test support: generated records (`tally-gen`) laid out over
//! partitions and offsets, archive files written directly, the standard test
//! config, and the truth as the testkit's plain fold over the records.
// Shared by several test binaries, each using a part: `pub` is the
// module's surface to them, not the crate's.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use object_store::ObjectStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_batch::archive_file::{self, ArchiveRows};
use tally_batch::promote::Promote;
use tally_core::agg::Agg;
use tally_core::config::{Config, Millis};
use tally_core::event::Limits;
use tally_core::time::EpochGrid;
use tally_store::cut::CutFile;
use tally_store::manifest::Manifest;
use tally_store::paths;
use tally_store::snapshot::read_rows;
use tally_testkit::config::{TestConfig, TOPIC};
use tally_testkit::gen::{Generated, Generator, IntRange, Shape};
use tally_testkit::truth::{Cells, Measure, Truth};

pub const T0: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z
pub const HOUR: i64 = 3_600_000;

/// The standard views, in their order.
pub const VIEWS: [&str; 3] = ["page_views", "by_type", "daily"];

/// One generated record at its Kafka coordinates.
#[derive(Debug, Clone)]
pub struct Gen {
    pub partition: i32,
    pub offset: i64,
    pub g: Generated,
}

impl Gen {
    pub fn json(&self) -> &[u8] {
        &self.g.payload
    }

    pub fn kafka_ts(&self) -> i64 {
        self.g.kafka_ts_ms
    }

    pub fn epoch(&self) -> i64 {
        self.g.kafka_ts_ms.div_euclid(HOUR)
    }
}

/// The batch tests' traffic: 20 % of events up to two days late, the rest up
/// to two minutes either side, 1 % malformed (every kind), durations from -50
/// (for min) to 1000, few pages and users so groups repeat.
pub fn shape() -> Shape {
    Shape {
        pages: 5,
        page_skew: 0.5,
        users: 3000,
        late_share: 0.2,
        max_late: Millis(2 * 86_400_000),
        out_of_order_share: 0.8,
        max_jitter: Millis(120_000),
        malformed_share: 0.01,
        duration: IntRange {
            min: -50,
            max: 1000,
        },
        ..Shape::default()
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
    generate_shaped(shape(), seed, n, partitions, next_offsets, ts_from, span)
}

/// [`generate`] with another traffic shape.
pub fn generate_shaped(
    shape: Shape,
    seed: u64,
    n: usize,
    partitions: i32,
    next_offsets: &mut Vec<i64>,
    ts_from: i64,
    span: i64,
) -> Vec<Gen> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut gen = Generator::new(shape, seed).expect("batch test shape");
    next_offsets.resize(partitions as usize, 0);
    (0..n)
        .map(|_| {
            let p = rng.gen_range(0..partitions);
            let offset = next_offsets[p as usize];
            next_offsets[p as usize] += 1;
            Gen {
                partition: p,
                offset,
                g: gen.next(ts_from + rng.gen_range(0..span)),
            }
        })
        .collect()
}

/// Write `events` as archive files (format v2, promoting the standard
/// views' properties), one per (epoch, partition), each named by its first
/// offset.
pub async fn write_archive(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    events: &[Gen],
) -> Vec<String> {
    write_archive_with(
        store,
        topic,
        events,
        &Promote::of(&TestConfig::new().build()),
    )
    .await
}

/// [`write_archive`] promoting what `promote` says (or writing format v1).
pub async fn write_archive_with(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    events: &[Gen],
    promote: &Promote,
) -> Vec<String> {
    let clock = EpochGrid::new(HOUR);
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
            g.kafka_ts(),
            clock,
            &limits,
            g.json(),
        );
    }
    let mut paths_out = Vec::new();
    for ((epoch, p), mut rows) in files {
        let path = paths::archive_file(epoch, topic, p, rows.first_offset);
        archive_file::write(store.clone(), &path, &mut rows, promote)
            .await
            .unwrap();
        paths_out.push(path);
    }
    paths_out
}

pub async fn set_cut(store: &Arc<dyn ObjectStore>, cut: i64) {
    tally_store::object::put_json(
        store.as_ref(),
        paths::CUT,
        &CutFile::V1 { cut, decided_ms: 0 },
    )
    .await
    .unwrap();
}

/// A batch test's usual start on one store: `hours` hours of generated
/// events from [`T0`] archived, the cut at their end. A test then runs
/// ([`Scenario::run`]), damages, adds ([`Scenario::more`]) and compares.
pub struct Scenario {
    pub cfg: Config,
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    /// The epoch of [`T0`].
    pub epoch0: i64,
    /// The next offset of each partition.
    pub offsets: Vec<i64>,
    /// Every event archived so far.
    pub events: Vec<Gen>,
    /// The archive files of the first events, by path.
    pub files: Vec<String>,
}

impl Scenario {
    /// `n` events (generator `seed`) over `partitions` partitions with Kafka
    /// times in the `hours` hours from [`T0`], archived in `cfg`'s store; the
    /// cut at the end of those hours.
    pub async fn archived(cfg: Config, seed: u64, n: usize, partitions: i32, hours: i64) -> Self {
        let store = tally_store::open(&cfg.store).unwrap();
        let mut offsets = Vec::new();
        let events = generate(seed, n, partitions, &mut offsets, T0, hours * HOUR);
        let files = write_archive(&store, "events", &events).await;
        let epoch0 = T0 / HOUR;
        set_cut(&store, epoch0 + hours).await;
        Scenario {
            url: cfg.store.url.clone(),
            cfg,
            store,
            epoch0,
            offsets,
            events,
            files,
        }
    }

    /// `n` more events (generator `seed`) with Kafka times in the `hours`
    /// hours from `from_ms`, archived; the cut is left where it is.
    pub async fn more(&mut self, seed: u64, n: usize, from_ms: i64, hours: i64) -> Vec<Gen> {
        let partitions = self.offsets.len() as i32;
        let more = generate(
            seed,
            n,
            partitions,
            &mut self.offsets,
            from_ms,
            hours * HOUR,
        );
        write_archive(&self.store, "events", &more).await;
        self.events.extend(more.iter().cloned());
        more
    }

    /// Publish the cut `hours` epochs after [`T0`]'s.
    pub async fn cut_at(&self, hours: i64) {
        set_cut(&self.store, self.epoch0 + hours).await;
    }

    /// One locked run with the default options, which must succeed.
    pub async fn run(&self) -> tally_batch::RunSummary {
        tally_batch::run_locked(&self.cfg, self.store.clone(), Default::default(), &|_| {})
            .await
            .unwrap()
    }

    /// Every view's snapshot equals the fold of every event below `cut`
    /// hours after [`T0`].
    pub async fn check(&self, hours: i64) {
        check_all(&self.store, &self.cfg, &self.events, self.epoch0 + hours).await;
    }
}

pub fn config(store_url: &str) -> Config {
    config_at(store_url, None)
}

/// The standard test views, with the store at `store_url` (and an S3
/// endpoint) and no grace before garbage collection.
pub fn config_at(store_url: &str, s3_endpoint: Option<&str>) -> Config {
    let mut cfg = TestConfig::new()
        .store(store_url)
        .extra("[batch]\ngc_grace = \"0ms\"")
        .build();
    if let Some(e) = s3_endpoint {
        cfg.store.s3_endpoint = Some(e.to_owned());
        cfg.store.s3_region = Some("us-east-1".into());
    }
    cfg
}

/// The truth of every view over the records of epochs below `cut`,
/// de-duplicated by coordinates.
pub fn truth(cfg: &Config, events: &[Gen], cut: i64) -> Truth {
    let mut seen = HashSet::new();
    let mut truth = Truth::new(cfg);
    for g in events {
        if g.epoch() < cut && seen.insert((g.partition, g.offset)) {
            truth.add_generated(TOPIC, &g.g);
        }
    }
    truth
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

/// The stores every scenario runs on: `memory://`, `file://` and, when moto
/// is installed, `s3://` on a private moto server. Each comes with its config
/// and a guard that keeps its backing alive.
pub fn stores() -> Vec<(Config, Box<dyn std::any::Any>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut out: Vec<(Config, Box<dyn std::any::Any>)> = vec![
        (config("memory://"), Box::new(())),
        (
            config(&format!("file://{}", dir.path().display())),
            Box::new(dir),
        ),
    ];
    match S3Server::start("tally") {
        Some(s3) => out.push((
            config_at("s3://tally/prefix", Some(&s3.endpoint)),
            Box::new(s3),
        )),
        None => eprintln!("moto_server not found: skipping s3://"),
    }
    out
}

/// The config of the archiver tests: small, quick rolls, one count view, and
/// no grace (an epoch is complete as soon as it ends).
pub fn archive_config(
    bootstrap: &str,
    topic: &str,
    group: &str,
    assignment: &str,
    store_url: &str,
) -> Config {
    let mut cfg = Config::from_toml(&format!(
        r#"
        [kafka]
        brokers = "{bootstrap}"
        topics = ["{topic}"]
        group = "{group}"
        assignment = "{assignment}"
        seek_back = 10000
        [store]
        url = "{store_url}"
        [archive]
        roll_bytes = 200000
        roll_interval = "300ms"
        [[view]]
        name = "v"
        granularity = "1m"
        measures = [{{ name = "n", agg = "count" }}]
        "#
    ))
    .expect("test config");
    cfg.epochs.grace = Millis(0);
    cfg
}

/// A view's published manifest.
pub async fn manifest(store: &Arc<dyn ObjectStore>, view: &str) -> Option<Manifest> {
    tally_store::object::get_json::<Manifest>(store.as_ref(), &paths::manifest(view))
        .await
        .unwrap()
        .map(|(m, _)| m)
}

/// A snapshot as (bucket, group) to one state per measure.
pub type Snapshot = BTreeMap<(i64, Vec<Option<String>>), Vec<Agg>>;

/// The view's snapshot at its own granularity.
pub async fn snapshot(store: &Arc<dyn ObjectStore>, cfg: &Config, view: &str) -> Snapshot {
    snapshot_at(store, cfg, view, None).await
}

/// The view's snapshot at `level_ms` (`None`: its own granularity).
pub async fn snapshot_at(
    store: &Arc<dyn ObjectStore>,
    cfg: &Config,
    view: &str,
    level_ms: Option<i64>,
) -> Snapshot {
    let m = manifest(store, view).await.expect("a published manifest");
    let def = cfg.view(view).unwrap();
    let level = level_ms.unwrap_or(def.granularity.as_ms());
    let mut out = BTreeMap::new();
    for d in m
        .days()
        .iter()
        .filter(|d| d.level_ms.unwrap_or(def.granularity.as_ms()) == level)
    {
        let rows = read_rows(store.as_ref(), &d.path, def).await.unwrap();
        assert_eq!(rows.len() as u64, d.rows);
        for (b, dims, aggs) in rows {
            assert_eq!(b.div_euclid(86_400_000), d.day, "bucket in its day's file");
            assert_eq!(b.rem_euclid(level), 0, "bucket at its level");
            assert!(out.insert((b, dims), aggs).is_none(), "one row per group");
        }
    }
    out
}

/// A distinct sketch is right when it has exactly the registers of a sketch
/// of the true set (Redis's PFADD of each value), and its estimate is within
/// 2 % (3 for tiny sets, where register collisions dominate) of the true count.
pub fn distinct_ok(agg: &Agg, users: &HashSet<String>) -> bool {
    let Agg::Distinct(h) = agg else { return false };
    let mut reference = tally_core::hll::Hll::new();
    for u in users {
        reference.add(u.as_bytes());
    }
    h.registers() == reference.registers()
        && tally_testkit::truth::within_hll_error(h.count(), users.len())
}

/// A quantile sketch is right when it counts every value of the truth and
/// each of p0, p10, p50, p90, p99 and p100 is within the promised relative
/// error of the exact quantile of the values.
pub fn quantiles_ok(agg: &Agg, cell: &tally_testkit::truth::Cell) -> bool {
    let Agg::Quantiles(s) = agg else { return false };
    s.count() == cell.values.len() as u64
        && [0.0, 0.1, 0.5, 0.9, 0.99, 1.0].iter().all(|&q| {
            match (s.quantile(q), cell.quantile(q)) {
                (Some(got), Some(exact)) => tally_testkit::truth::within_quantile_error(got, exact),
                (got, exact) => got == exact,
            }
        })
}

/// Compare a view's snapshot with the truth, measure by measure.
pub async fn check(
    store: &Arc<dyn ObjectStore>,
    cfg: &Config,
    view: &str,
    events: &[Gen],
    cut: i64,
) {
    check_with(store, cfg, view, &truth(cfg, events, cut)).await;
}

/// Compare a view's snapshot with `truth` at every level the manifest lists
/// (the view's granularity and each roll-up), each against the truth rolled up.
pub async fn check_with(store: &Arc<dyn ObjectStore>, cfg: &Config, view: &str, truth: &Truth) {
    let m = manifest(store, view).await.expect("a published manifest");
    let def = cfg.view(view).unwrap();
    let levels: Vec<i64> = def.levels().iter().map(|g| g.as_ms()).collect();
    if let Manifest::V2(v2) = &m {
        assert_eq!(v2.levels_ms, levels, "{view}: levels");
    }
    let t = truth.view(view);
    for level in levels {
        let snap = snapshot_at(store, cfg, view, Some(level)).await;
        let cells = t.cells.rollup(level);
        compare(&format!("{view} at {level} ms"), &t.measures, &cells, &snap);
    }
}

/// `snap` against the truth's `cells`, group by group and measure by measure.
pub fn compare(what: &str, measures: &[Measure], cells: &Cells, snap: &Snapshot) {
    assert_eq!(
        snap.keys().collect::<Vec<_>>(),
        cells.map.keys().collect::<Vec<_>>(),
        "{what}: groups"
    );
    for (k, cells) in &cells.map {
        let aggs = &snap[k];
        for ((m, t), a) in measures.iter().zip(cells).zip(aggs) {
            let what = format!("{what}: {} {k:?}", m.name);
            match m.agg.as_str() {
                "count" => assert_eq!(a, &Agg::Count(t.count), "{what}"),
                "sum" => assert_eq!(
                    a,
                    &Agg::Sum {
                        int: t.sum_int,
                        float: t.sum_float
                    },
                    "{what}"
                ),
                "min" => assert_eq!(a, &Agg::Min(t.min), "{what}"),
                "max" => assert_eq!(a, &Agg::Max(t.max), "{what}"),
                "distinct" => assert!(
                    distinct_ok(a, &t.distinct),
                    "{what}: {a:?} vs {}",
                    t.distinct.len()
                ),
                "quantiles" => assert!(
                    quantiles_ok(a, t),
                    "{what}: {a:?} vs {} values",
                    t.values.len()
                ),
                other => panic!("unknown agg {other}"),
            }
        }
    }
}

/// Compare every standard view with the truth of `events` below `cut`.
pub async fn check_all(store: &Arc<dyn ObjectStore>, cfg: &Config, events: &[Gen], cut: i64) {
    let truth = truth(cfg, events, cut);
    for v in VIEWS {
        check_with(store, cfg, v, &truth).await;
    }
}

/// A valid record at `(partition, offset)`, with Kafka time `kafka_ts_ms`.
pub fn record(partition: i32, offset: i64, kafka_ts_ms: i64, json: String) -> Gen {
    Gen {
        partition,
        offset,
        g: Generated {
            key: Vec::new(),
            payload: json.into_bytes(),
            kafka_ts_ms,
            valid: true,
            kind: None,
        },
    }
}
