//! The master dataset is queryable by anyone: a DuckDB query over the
//! archive files (the README's one-liner, de-duplicated on the Kafka
//! coordinates) equals what `tally serve` answers for the same view, and
//! both equal the plain fold.
//!
//! The archive is written with the batch crate's own writer (format v2, the
//! standard views' properties promoted), the batch runs as `tally batch run`,
//! and `tally serve` answers over HTTP. Skipped, with a message, when
//! python3 has no `duckdb` (`infra/install` installs it).

mod role;

use std::collections::{BTreeMap, BTreeSet};

use std::time::{Duration, Instant};

use role::Role;
use tally_batch::archive_file::{self, ArchiveRows};
use tally_batch::promote::Promote;
use tally_core::time::EpochGrid;
use tally_gen::{Generator, Shape};
use tally_store::cut::CutFile;
use tally_store::paths;
use tally_testkit::config::{TestConfig, TOPIC};
use tally_testkit::truth::{within_hll_error, Truth};
use tally_testkit::Redis;

const T0: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z
const HOUR: i64 = 3_600_000;
const PARTITIONS: i32 = 3;

/// (hour bucket, page) to (views, duration sum, longest, distinct users).
type Answer = BTreeMap<(i64, String), (u64, i64, Option<f64>, u64)>;

#[test]
fn a_duckdb_query_over_the_store_equals_the_api_and_the_truth() {
    if std::process::Command::new("python3")
        .args(["-c", "import duckdb"])
        .status()
        .map_or(true, |s| !s.success())
    {
        eprintln!("python3 has no duckdb (run infra/install): skipped");
        return;
    }
    let redis = Redis::start().expect("redis");
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let port = tally_testkit::free_port().expect("port");
    let test_cfg = TestConfig::new()
        .redis(&redis.url())
        .store(&format!("file://{}", store_dir.display()))
        .extra(&format!(
            "[serve]\nlisten = \"127.0.0.1:{port}\"\n[events]\nmax_past = \"2d\""
        ));
    let config = dir.path().join("tally.toml");
    std::fs::write(&config, test_cfg.toml()).expect("config");
    let cfg = test_cfg.build();

    // Six hours of traffic, late events and duplicates among them: every
    // file of partition 0 written twice, the second copy under a later name.
    let shape = Shape {
        pages: 6,
        users: 2_000,
        late_share: 0.1,
        malformed_share: 0.01,
        ..Shape::default()
    }
    .with_limits(cfg.events.limits());
    let mut gen = Generator::new(shape, 17).expect("shape");
    let mut truth = Truth::new(&cfg);
    let clock = EpochGrid::new(HOUR);
    let promote = Promote::of(&cfg);
    let rt = tally_testkit::runtime();
    let store = tally_store::open(&cfg.store).expect("store");
    let mut offsets = [0i64; PARTITIONS as usize];
    for h in 0..6i64 {
        let mut files: Vec<ArchiveRows> = offsets.iter().map(|&o| ArchiveRows::new(o)).collect();
        let mut copy = ArchiveRows::new(offsets[0]);
        for i in 0..6_000i64 {
            let ts = T0 + h * HOUR + i * 600;
            let g = gen.next(ts);
            truth.add_generated(TOPIC, &g);
            let p = (i % PARTITIONS as i64) as usize;
            let limits = cfg.events.limits();
            // The record's own Kafka time: the generator's malformed kinds
            // include impossible ones, which the archive must mark rejected.
            let kts = g.kafka_ts_ms;
            files[p].push(TOPIC, p as i32, offsets[p], kts, clock, &limits, &g.payload);
            if p == 0 {
                copy.push(TOPIC, 0, offsets[p], kts, clock, &limits, &g.payload);
            }
            offsets[p] += 1;
        }
        let epoch = T0 / HOUR + h;
        let dup = paths::archive_file(epoch, TOPIC, 0, copy.first_offset + 1_000_000);
        rt.block_on(archive_file::write(
            store.clone(),
            &dup,
            &mut copy,
            &promote,
        ))
        .expect("archive file");
        for (p, mut rows) in files.into_iter().enumerate() {
            let path = paths::archive_file(epoch, TOPIC, p as i32, rows.first_offset);
            rt.block_on(archive_file::write(
                store.clone(),
                &path,
                &mut rows,
                &promote,
            ))
            .expect("archive file");
        }
    }
    rt.block_on(tally_store::object::put_json(
        store.as_ref(),
        paths::CUT,
        &CutFile::V1 {
            cut: T0 / HOUR + 6,
            decided_ms: 0,
        },
    ))
    .expect("cut");
    role::batch_run(&config);

    let duck = duckdb(&store_dir);
    let api = api(&config, &dir.path().join("serve.log"), port);
    let fold = fold(&truth);
    assert!(fold.len() > 30, "{} groups", fold.len());
    assert_eq!(
        duck.keys().collect::<Vec<_>>(),
        fold.keys().collect::<Vec<_>>(),
        "DuckDB groups"
    );
    assert_eq!(
        api.keys().collect::<Vec<_>>(),
        fold.keys().collect::<Vec<_>>(),
        "API groups"
    );
    for (k, want) in &fold {
        let (d, a) = (duck[k], api[k]);
        assert_eq!((d.0, d.1, d.2), (want.0, want.1, want.2), "DuckDB {k:?}");
        assert_eq!((a.0, a.1, a.2), (want.0, want.1, want.2), "API {k:?}");
        // DuckDB counts distinct users exactly; Tally estimates.
        assert_eq!(d.3, want.3, "DuckDB distinct {k:?}");
        assert!(
            within_hll_error(a.3, want.3 as usize),
            "API distinct {k:?}: {} vs {}",
            a.3,
            want.3
        );
    }
    drop(redis);
}

/// The truth of `page_views` by hour and page.
fn fold(truth: &Truth) -> Answer {
    let v = truth.view("page_views");
    let (views, duration, longest, users) = (
        v.measure("views"),
        v.measure("duration"),
        v.measure("longest"),
        v.measure("users"),
    );
    v.cells
        .rollup(HOUR)
        .map
        .iter()
        .filter_map(|((b, g), c)| {
            let page = g[0].clone()?;
            Some((
                (*b, page),
                (
                    c[views].count,
                    i64::try_from(c[duration].sum_int).expect("small sums"),
                    c[longest].max,
                    c[users].distinct.len() as u64,
                ),
            ))
        })
        .collect()
}

/// The README's DuckDB query over the archive, by hour.
fn duckdb(store: &std::path::Path) -> Answer {
    let script = format!(
        r#"
import duckdb, json
rows = duckdb.sql("""
  SELECT time_ms // 3600000 * 3600000 AS hour, "properties.page" AS page,
         count(*) AS views, sum("properties.duration") AS duration,
         max("properties.duration") AS longest, count(DISTINCT user_id) AS users
  FROM (SELECT DISTINCT ON (topic, "partition", "offset") reject, event_type, time_ms, user_id,
               "properties.page", "properties.duration"
        FROM read_parquet('{}/events/*/*/*/*.parquet', union_by_name = true, hive_partitioning = false))
  WHERE reject IS NULL AND event_type = 'page_view' AND "properties.page" IS NOT NULL
  GROUP BY ALL
""").fetchall()
print(json.dumps([[int(h), p, int(v), int(d or 0), l, int(u)] for h, p, v, d, l, u in rows]))
"#,
        store.display()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(i64, String, u64, i64, Option<f64>, u64)> =
        serde_json::from_slice(&out.stdout).expect("DuckDB rows");
    rows.into_iter()
        .map(|(h, p, v, d, l, u)| ((h, p), (v, d, l, u)))
        .collect()
}

/// `tally serve`'s answer for `page_views` by hour and page.
fn api(config: &std::path::Path, log: &std::path::Path, port: u16) -> Answer {
    let serve = Role::start(&["serve"], config, log, &[]);
    let url = format!(
        "http://127.0.0.1:{port}/api/v1/views/page_views/query?from={}&to={}&granularity=3600000ms&group_by=properties.page&measures=views,duration,longest,users",
        T0 - 3 * 86_400_000,
        T0 + 86_400_000
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let body: serde_json::Value = loop {
        match ureq::get(&url).call() {
            Ok(r) => break r.into_json().expect("JSON"),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("GET {url}: {e}"),
        }
    };
    serve.terminate();
    let mut out = Answer::new();
    let mut pages = BTreeSet::new();
    for s in body["series"].as_array().expect("series") {
        let Some(page) = s["group"]["properties.page"].as_str() else {
            continue;
        };
        pages.insert(page.to_owned());
        for p in s["points"].as_array().expect("points") {
            let v = &p["values"];
            out.insert(
                (p["t"].as_i64().expect("t"), page.to_owned()),
                (
                    v["views"].as_u64().expect("views"),
                    v["duration"].as_f64().expect("duration") as i64,
                    v["longest"].as_f64(),
                    v["users"].as_u64().expect("users"),
                ),
            );
        }
    }
    out
}
