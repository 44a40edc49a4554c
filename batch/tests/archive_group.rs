//! The archiver as a consumer-group member against a real broker (a private
//! Tansu): two archivers in one group split the partitions while records are
//! produced, and afterwards every produced record is in the master dataset
//! exactly once by coordinates, also when one member leaves mid-stream.
//!
//! The truth is what the test produced, counted per partition (offsets are
//! assigned in produce order); the archive is read back file by file.
//! `TALLY_TEST_ARCHIVE_GROUP_N` sets the number of records (default 60,000).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use rand::{Rng, SeedableRng};
use tally_batch::archive::{self, ArchiveSummary};
use tally_batch::archive_file;
use tally_core::config::Config;
use tally_store::cut::CutFile;
use tally_store::paths;
use tally_store::progress::ProgressFile;
use tally_testkit::kafka::{self, Record};
use tally_testkit::Broker;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const T0: i64 = 1_704_067_200_000;
const HOUR: i64 = 3_600_000;
const PARTITIONS: i32 = 4;
const TOPIC: &str = "events";

fn n_records() -> usize {
    std::env::var("TALLY_TEST_ARCHIVE_GROUP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000)
}

/// `n` records over the partitions and three ingest epochs; every payload is
/// unique (it carries its index), one in 97 is not JSON.
fn records(seed: u64, n: usize) -> Vec<Record> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let ts = T0 + rng.gen_range(0..3 * HOUR);
            let payload = if i % 97 == 0 {
                format!("not json {i}").into_bytes()
            } else {
                format!(
                    r#"{{"event_id":"e{i}","event_type":"page_view","timestamp":{ts},"user_id":"u{}","properties":{{"page":"/p{}"}}}}"#,
                    i % 777,
                    i % 5
                )
                .into_bytes()
            };
            Record {
                partition: rng.gen_range(0..PARTITIONS),
                payload,
                timestamp_ms: ts,
            }
        })
        .collect()
}

/// Records produced to each partition: its end offset once all are in.
fn ends(records: &[Record]) -> Vec<i64> {
    let mut ends = vec![0i64; PARTITIONS as usize];
    for r in records {
        ends[r.partition as usize] += 1;
    }
    ends
}

fn config(bootstrap: &str, group: &str) -> Config {
    config_with(bootstrap, group, "group")
}

fn config_with(bootstrap: &str, group: &str, assignment: &str) -> Config {
    common::archive_config(bootstrap, TOPIC, group, assignment, "memory://")
}

fn setup() -> (Broker, String) {
    let broker = Broker::start().expect("start tansu");
    kafka::create_topic(&broker.bootstrap(), TOPIC, PARTITIONS).expect("topic");
    let bootstrap = broker.bootstrap();
    (broker, bootstrap)
}

/// A running in-process archiver and the sender that stops it gracefully.
struct Member {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<ArchiveSummary, archive::ArchiveError>>,
}

fn start(cfg: &Config, store: &Arc<dyn ObjectStore>) -> Member {
    let (stop, rx) = oneshot::channel::<()>();
    let (cfg, store) = (cfg.clone(), store.clone());
    let task = tokio::spawn(async move {
        archive::run(&cfg, store, async {
            let _ = rx.await;
        })
        .await
    });
    Member { stop, task }
}

impl Member {
    /// SIGTERM's path: roll, publish, leave the group.
    async fn stop(self) -> ArchiveSummary {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("archiver stops within 60 s")
            .expect("archiver task")
            .expect("archiver ran without error")
    }
}

/// Produce `records` from a blocking thread, in slices with pauses between
/// them, so that production spans the group's rebalances.
async fn produce_paced(bootstrap: &str, records: Vec<Record>, slices: usize, pause: Duration) {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        kafka::produce_paced(&bootstrap, TOPIC, &records, slices, pause).expect("produce")
    })
    .await
    .expect("producer thread");
}

/// Wait until every partition's stored progress is at its end offset.
async fn wait_archived(store: &Arc<dyn ObjectStore>, ends: &[i64], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut behind = Vec::new();
        for (p, end) in ends.iter().enumerate() {
            let to = tally_store::object::get_json::<ProgressFile>(
                store.as_ref(),
                &paths::archive_progress(TOPIC, p as i32),
            )
            .await
            .expect("read progress")
            .map(|(ProgressFile::V1 { archived_to, .. }, _)| archived_to);
            if to != Some(*end) {
                behind.push((p, to, *end));
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not archived within {limit:?}: (partition, archived_to, end) {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every produced record is archived exactly once by coordinates (no offset
/// missing, none twice, before any de-duplication), on the partition it was
/// produced to, with its raw bytes.
async fn assert_exactly_once(store: &Arc<dyn ObjectStore>, produced: &[Record]) {
    let files = tally_store::object::list(store.as_ref(), paths::EVENTS_ROOT)
        .await
        .expect("list archive");
    let mut seen: HashMap<(i32, i64), usize> = HashMap::new();
    let mut by_partition: HashMap<i32, HashSet<Vec<u8>>> = HashMap::new();
    for f in &files {
        let path = f.location.to_string();
        let parsed = paths::parse_archive_file(&path).expect("only archive files under events/");
        let batches = archive_file::read_all(store.clone(), &path)
            .await
            .expect("read archive file");
        for b in &batches {
            let raw = b
                .column_by_name("raw")
                .and_then(|c| c.as_any().downcast_ref::<arrow_array::BinaryArray>())
                .expect("raw column");
            for (r, (t, p, o)) in archive_file::coordinates(std::slice::from_ref(b))
                .into_iter()
                .enumerate()
            {
                assert_eq!((t.as_str(), p), (TOPIC, parsed.partition), "{path}");
                *seen.entry((p, o)).or_default() += 1;
                by_partition
                    .entry(p)
                    .or_default()
                    .insert(raw.value(r).to_vec());
            }
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, &c)| c > 1).take(5).collect();
    assert!(dups.is_empty(), "coordinates archived twice: {dups:?}");
    let ends = ends(produced);
    for (p, end) in ends.iter().enumerate() {
        let missing: Vec<i64> = (0..*end)
            .filter(|o| !seen.contains_key(&(p as i32, *o)))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "partition {p}: offsets missing {missing:?}"
        );
    }
    assert_eq!(
        seen.len(),
        produced.len(),
        "no coordinates beyond the produced"
    );
    let mut want: HashMap<i32, HashSet<Vec<u8>>> = HashMap::new();
    for r in produced {
        want.entry(r.partition)
            .or_default()
            .insert(r.payload.clone());
    }
    assert!(
        want == by_partition,
        "archived raw bytes differ from what was produced to each partition"
    );
}

async fn assert_cut_published(store: &Arc<dyn ObjectStore>) {
    let (CutFile::V1 { cut, .. }, _) =
        tally_store::object::get_json::<CutFile>(store.as_ref(), paths::CUT)
            .await
            .expect("read cut")
            .expect("a published cut");
    assert!(cut >= T0 / HOUR + 3, "cut {cut}");
}

#[test]
fn two_archivers_in_one_group_split_the_partitions_exactly_once() {
    let (broker, bootstrap) = setup();
    tally_testkit::runtime().block_on(two_members(&bootstrap));
    drop(broker);
}

async fn two_members(bootstrap: &str) {
    let bootstrap = bootstrap.to_owned();
    let cfg = config(&bootstrap, &format!("group-{}", rand::random::<u32>()));
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let recs = records(11, n_records());

    let a = start(&cfg, &store);
    let b = start(&cfg, &store);
    produce_paced(&bootstrap, recs.clone(), 10, Duration::from_millis(500)).await;
    wait_archived(&store, &ends(&recs), Duration::from_secs(240)).await;
    let (sa, sb) = (a.stop().await, b.stop().await);
    eprintln!("a: {sa:?}\nb: {sb:?}");
    assert!(
        sa.records > 0 && sb.records > 0,
        "both members archived records (the group split the partitions)"
    );

    assert_exactly_once(&store, &recs).await;
    assert_cut_published(&store).await;
}

#[test]
fn a_member_leaving_mid_stream_hands_its_partitions_over_exactly_once() {
    let (broker, bootstrap) = setup();
    tally_testkit::runtime().block_on(one_leaves(&bootstrap));
    drop(broker);
}

async fn one_leaves(bootstrap: &str) {
    let bootstrap = bootstrap.to_owned();
    let cfg = config(&bootstrap, &format!("group-{}", rand::random::<u32>()));
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let recs = records(12, n_records());
    let (first, rest) = recs.split_at(recs.len() / 2);

    let a = start(&cfg, &store);
    let b = start(&cfg, &store);
    produce_paced(&bootstrap, first.to_vec(), 5, Duration::from_millis(500)).await;
    // Leave while records are still arriving: the survivor takes over from
    // the progress the leaver published.
    let producing = tokio::spawn({
        let (bootstrap, rest) = (bootstrap.clone(), rest.to_vec());
        async move { produce_paced(&bootstrap, rest, 10, Duration::from_millis(300)).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sa = a.stop().await;
    producing.await.expect("producer");
    wait_archived(&store, &ends(&recs), Duration::from_secs(240)).await;
    let sb = b.stop().await;
    eprintln!("a: {sa:?}\nb: {sb:?}");
    assert!(
        sa.records > 0,
        "the leaver archived its share before leaving"
    );

    assert_exactly_once(&store, &recs).await;
    assert_cut_published(&store).await;
}

/// The zombie case at every partition: two archivers that each take every
/// partition (`kafka.assignment = "all"`, no group to keep them apart). The
/// second one's claims take the partitions over; the first one's next fenced
/// write fails, and it drops them. Still exactly once.
#[test]
fn a_newer_claim_fences_the_older_archiver_off_every_partition() {
    let (broker, bootstrap) = setup();
    tally_testkit::runtime().block_on(racing(&bootstrap));
    drop(broker);
}

async fn racing(bootstrap: &str) {
    let bootstrap = bootstrap.to_owned();
    let cfg = config_with(
        &bootstrap,
        &format!("group-{}", rand::random::<u32>()),
        "all",
    );
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let recs = records(13, n_records());
    let (first, rest) = recs.split_at(recs.len() / 3);

    let a = start(&cfg, &store);
    produce_paced(&bootstrap, first.to_vec(), 3, Duration::from_millis(300)).await;
    wait_archived(&store, &ends(first), Duration::from_secs(120)).await;
    let b = start(&cfg, &store);
    produce_paced(&bootstrap, rest.to_vec(), 10, Duration::from_millis(300)).await;
    wait_archived(&store, &ends(&recs), Duration::from_secs(240)).await;
    let (sa, sb) = (a.stop().await, b.stop().await);
    eprintln!("a: {sa:?}\nb: {sb:?}");
    assert_eq!(
        sa.lost, PARTITIONS as u64,
        "the older archiver was fenced off every partition"
    );
    assert_eq!(sb.lost, 0, "the newer archiver kept every partition");

    assert_exactly_once(&store, &recs).await;
    assert_cut_published(&store).await;
}
