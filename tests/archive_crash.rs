//! `tally archive` SIGKILLed at random points while a million records are
//! produced, restarted each time: afterwards every (partition, offset) is in
//! the master dataset exactly once, offsets run without a gap, and the raw
//! bytes archived are exactly the records produced, malformed ones included.
//! Producer batches of 1,000 records make resumes land mid-batch (see
//! `kafka/src/resume.rs` on Tansu's mid-batch seeks). Run with
//! `kafka.assignment = "all"` and as a consumer-group member restarted under
//! the same `kafka.instance_id`; and with two archivers in one group, one leaving
//! mid-stream (SIGTERM) and the other SIGKILLed and restarted.
//!
//! The archive files are read back with the `parquet` crate directly, not
//! with the batch layer's reader.

mod role;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow_array::{Array, BinaryArray, Int32Array, Int64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use role::Role;
use tally_core::config::Config;
use tally_gen::{produce, Generator, ProduceOptions, Shape};
use tally_testkit::config::{TestConfig, TOPIC};
use tally_testkit::{kafka, Broker};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;
const RECORDS: u64 = 1_000_000;
const KILLS: usize = 6;

/// Sum of `archived_to` over the progress files (`archive/progress/…`).
fn archived(store: &Path) -> i64 {
    let dir = store.join("archive/progress").join(TOPIC);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter_map(|v| v["archived_to"].as_i64())
        .sum()
}

fn parquet_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            parquet_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "parquet") {
            out.push(path);
        }
    }
}

/// A fresh broker with the topic, a store folder, and `tally.toml` for it:
/// (broker, tempdir, config path, config, store folder). `kafka` goes into
/// the `[kafka]` table.
fn setup(group: &str, kafka: &str) -> (Broker, tempfile::TempDir, PathBuf, Config, PathBuf) {
    let broker = Broker::start().expect("broker");
    kafka::create_topic(&broker.bootstrap(), TOPIC, PARTITIONS).expect("topic");
    let dir = tempfile::Builder::new()
        .prefix("archive-crash-")
        .tempdir()
        .expect("tempdir");
    let store = dir.path().join("store");
    let test_cfg = TestConfig::new()
        .brokers(&broker.bootstrap())
        .store(&format!("file://{}", store.display()))
        .group(group)
        .extra(
            r#"
[epochs]
length = "10s"
grace = "2s"
[archive]
roll_interval = "1s"
"#,
        );
    let text = test_cfg
        .toml()
        .replace("[kafka]\n", &format!("[kafka]\n{kafka}\n"));
    let config = dir.path().join("tally.toml");
    std::fs::write(&config, &text).expect("config");
    let cfg = Config::from_toml(&text).expect("test config");
    eprintln!("logs in {}", dir.path().display());
    (broker, dir, config, cfg, store)
}

/// Produce `RECORDS` generated records (1 % malformed) at `rate` per second
/// in producer batches of 1,000, from a thread; it returns the multiset of
/// payloads produced.
fn produce_in_thread(cfg: &Config, rate: f64) -> std::thread::JoinHandle<HashMap<Vec<u8>, u32>> {
    let kafka_cfg = cfg.kafka.clone();
    let limits = cfg.events.limits();
    std::thread::spawn(move || {
        let mut shape = Shape::default().with_limits(limits).clamped_to_limits();
        shape.malformed_share = 0.01;
        let mut generator = Generator::new(shape, 5).expect("generator");
        let mut options = ProduceOptions::new(TOPIC, rate);
        options.count = Some(RECORDS);
        options.settings = vec![("batch.num.messages".into(), "1000".into())];
        let mut produced: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut keep = |g: &tally_gen::Generated| {
            *produced.entry(g.payload.clone()).or_default() += 1;
        };
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let report = rt
            .block_on(produce(
                &kafka_cfg,
                &mut generator,
                &options,
                Some(&mut keep),
                &CancellationToken::new(),
            ))
            .expect("produce");
        assert_eq!(report.delivered, RECORDS, "{report:?}");
        produced
    })
}

/// Wait until the progress files cover every record (the role must keep
/// running); on failure, show the end of its log.
fn wait_archived(store: &Path, running: &mut Role, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while archived(store) < RECORDS as i64 {
        running.assert_running();
        if Instant::now() >= deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "archived {} of {RECORDS} records after 300 s; end of {}:\n{}",
                archived(store),
                log.display(),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One archiver that reads every partition itself (`kafka.assignment =
/// "all"`, the archiver's only mode before group membership).
#[test]
fn archiver_killed_at_random_points_keeps_every_record_exactly_once() {
    killed_at_random_points("assignment = \"all\"", &[]);
}

/// One group member, restarted under the same `kafka.instance_id`: without
/// static membership Tansu 0.6 keeps a SIGKILLed member's partitions
/// assigned to it after its session expires, and the restarted process gets
/// only a share (measured: one partition of four, the rest never archived).
#[test]
#[ignore = "Tansu 0.6: a static member rejoining after SIGKILL is sometimes assigned its partitions, revoked a second later and never assigned again (CI 2026-12-01: 0 of 1M records in 300 s); the group logic is covered in-process by batch/tests/archive_group.rs"]
fn group_member_killed_at_random_points_keeps_every_record_exactly_once() {
    killed_at_random_points("", &[("TALLY_KAFKA__INSTANCE_ID", "only")]);
}

fn killed_at_random_points(kafka: &str, env: &[(&str, &str)]) {
    let (_broker, dir, config, cfg, store) = setup("archive-crash", kafka);
    let log = dir.path().join("archive.log");
    let producer = produce_in_thread(&cfg, 150_000.0);

    let mut rng = StdRng::seed_from_u64(17);
    let mut archive = Role::start(&["archive"], &config, &log, env);
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(rng.gen_range(700..3000)));
        archive.kill9();
        archive = Role::start(&["archive"], &config, &log, env);
    }
    let produced = producer.join().expect("producer");

    wait_archived(&store, &mut archive, &log);
    archive.terminate();
    assert_exactly_once(&store, &produced);
}

/// Two `tally archive` processes in one consumer group while records arrive:
/// one leaves with SIGTERM mid-stream (the other takes its partitions from
/// the progress it published), then the survivor is SIGKILLed and restarted.
/// Static membership (`kafka.instance_id`, on the survivor only: a static
/// member does not leave the group on SIGTERM) lets the restarted process
/// take the dead one's place: Tansu 0.6 does not reassign a SIGKILLed
/// member's partitions when its session expires (see the README).
#[test]
#[ignore = "Tansu 0.6: the SIGKILLed static member's rejoin loses its assignment in about one run of three (2026-12-01), as above; the group logic is covered in-process by batch/tests/archive_group.rs"]
fn archivers_in_a_group_leaving_and_killed_keep_every_record_exactly_once() {
    let (_broker, dir, config, cfg, store) = setup("archive-group", "");
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let producer = produce_in_thread(&cfg, 60_000.0);
    let a = Role::start(&["archive"], &config, &log_a, &[]);
    let b_env = [("TALLY_KAFKA__INSTANCE_ID", "b")];
    let mut b = Role::start(&["archive"], &config, &log_b, &b_env);
    std::thread::sleep(Duration::from_secs(6));
    a.terminate();
    std::thread::sleep(Duration::from_secs(4));
    b.assert_running();
    b.kill9();
    let mut b = Role::start(&["archive"], &config, &log_b, &b_env);
    let produced = producer.join().expect("producer");
    wait_archived(&store, &mut b, &log_b);
    b.terminate();
    assert_exactly_once(&store, &produced);
    let logs = std::fs::read_to_string(&log_a).unwrap_or_default()
        + &std::fs::read_to_string(&log_b).unwrap_or_default();
    assert!(
        logs.matches("partition claimed").count() > PARTITIONS as usize,
        "partitions never changed hands: the test did not test the group"
    );
}

/// Every (partition, offset) in the archive exactly once, offsets without a
/// gap, and the raw bytes exactly the records produced.
fn assert_exactly_once(store: &Path, produced: &HashMap<Vec<u8>, u32>) {
    let mut files = Vec::new();
    parquet_files(&store.join("events"), &mut files);
    let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    let mut archived_raw: HashMap<Vec<u8>, u32> = HashMap::new();
    for path in &files {
        let file = File::open(path).expect("open archive file");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for batch in reader {
            let batch = batch.expect("record batch");
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .unwrap_or_else(|| panic!("no column {name}"))
                    .clone()
            };
            let partition = col("partition");
            let partition = partition
                .as_any()
                .downcast_ref::<Int32Array>()
                .expect("int32");
            let offset = col("offset");
            let offset = offset.as_any().downcast_ref::<Int64Array>().expect("int64");
            let raw = col("raw");
            let raw = raw.as_any().downcast_ref::<BinaryArray>().expect("binary");
            for i in 0..batch.num_rows() {
                offsets
                    .entry(partition.value(i))
                    .or_default()
                    .push(offset.value(i));
                *archived_raw.entry(raw.value(i).to_vec()).or_default() += 1;
            }
        }
    }
    let mut total = 0;
    for (p, offs) in &mut offsets {
        offs.sort_unstable();
        let n = offs.len() as i64;
        for (want, got) in (0..n).zip(offs.iter()) {
            assert_eq!(
                *got, want,
                "partition {p}: offset {want} missing or duplicated"
            );
        }
        total += n;
    }
    assert_eq!(
        total,
        RECORDS as i64,
        "records archived across {} files",
        files.len()
    );
    assert_eq!(offsets.len(), PARTITIONS as usize, "partitions archived");
    assert!(
        archived_raw == *produced,
        "the archived raw bytes differ from the records produced"
    );
}
