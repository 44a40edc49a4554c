//! Gaps never taken as progress by the archiver, and replays never archived
//! twice, against the real broker: a seek that lands past the claimed
//! position, a progress object beyond the end of the log (the broker lost
//! its records and the topic was created again), a crash replay whose
//! rolls overlap files already durable, and a roll whose file another
//! writer made durable while the archiver read on. Checked against the
//! coordinates the test produced.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::BaseProducer;
use rdkafka::{Offset, TopicPartitionList};
use tally_batch::{archive, archive_file};
use tally_kafka::fault::fail_seeks_from_next_reseek;
use tally_store::cut::CutFile;
use tally_store::object as store;
use tally_store::paths;
use tally_store::progress::ProgressFile;
use tally_testkit::kafka::{self, Record};
use tally_testkit::Broker;

const TOPIC: &str = "events";
const T0: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z
const HOUR: i64 = 3_600_000;

/// `n` valid events for `partition`, numbered from `first`.
fn records(partition: i32, first: usize, n: usize) -> Vec<Record> {
    (first..first + n)
        .map(|i| {
            let ts = T0 + i as i64 * 1000;
            Record {
                partition,
                payload: format!(
                    r#"{{"event_id":"p{partition}-{i}","event_type":"page_view","timestamp":{ts}}}"#
                )
                .into_bytes(),
                timestamp_ms: ts,
            }
        })
        .collect()
}

/// How often each (partition, offset) is in the master dataset.
async fn archived(store: &Arc<dyn ObjectStore>) -> BTreeMap<(i32, i64), usize> {
    let mut seen = BTreeMap::new();
    for f in store::list(store.as_ref(), paths::EVENTS_ROOT)
        .await
        .unwrap()
    {
        let batches = archive_file::read_all(store.clone(), f.location.as_ref())
            .await
            .unwrap();
        for (_, p, o) in archive_file::coordinates(&batches) {
            *seen.entry((p, o)).or_default() += 1;
        }
    }
    seen
}

/// `seen` holds exactly `want`, once each; a short account of the
/// difference otherwise.
fn assert_exactly(seen: &BTreeMap<(i32, i64), usize>, want: impl Iterator<Item = (i32, i64)>) {
    let want: std::collections::BTreeSet<(i32, i64)> = want.collect();
    let missing: Vec<_> = want.iter().filter(|c| !seen.contains_key(c)).collect();
    let extra: Vec<_> = seen.keys().filter(|c| !want.contains(c)).collect();
    let doubled: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && doubled.is_empty(),
        "{} missing (from {:?}), {} extra (from {:?}), {} doubled (from {:?})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first(),
        doubled.len(),
        doubled.first()
    );
}

async fn progress(store: &Arc<dyn ObjectStore>, partition: i32) -> Option<ProgressFile> {
    store::get_json::<ProgressFile>(store.as_ref(), &paths::archive_progress(TOPIC, partition))
        .await
        .unwrap()
        .map(|(f, _)| f)
}

async fn wait_archived_to(store: &Arc<dyn ObjectStore>, partition: i32, end: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(ProgressFile::V1 { archived_to, .. }) = progress(store, partition).await {
            if archived_to == end {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "partition {partition} not archived to {end}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An archiver run until `stop` resolves.
fn start(
    cfg: &tally_core::config::Config,
    store: &Arc<dyn ObjectStore>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<archive::ArchiveSummary, archive::ArchiveError>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (cfg, store) = (cfg.clone(), store.clone());
    let task = tokio::spawn(async move {
        archive::run(&cfg, store, async {
            let _ = rx.await;
        })
        .await
    });
    (tx, task)
}

fn progress_file(partition: i32, archived_to: i64, observed_ms: i64) -> ProgressFile {
    ProgressFile::V1 {
        topic: TOPIC.into(),
        partition,
        archived_to,
        high_watermark: archived_to,
        observed_ms,
        owner: None,
    }
}

/// Resuming mid-batch with no seek-back at all: Tansu answers the seek with
/// the next record batch. Before, the first record after the seek was only
/// logged, the rest of the batch never archived, and the progress (and the
/// cut) moved past it; now the partition seeks further back until a record
/// at or below its position arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seek_that_lands_past_the_claimed_position_seeks_further_back() {
    let broker = Broker::start().unwrap();
    let bootstrap = broker.bootstrap();
    topic_with(&bootstrap, 3_000).await;
    let target = 1_234;
    let b = bootstrap.clone();
    let first = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("group.id", "probe")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, Offset::Offset(target))
            .unwrap();
        c.assign(&tpl).unwrap();
        loop {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                return m.offset();
            }
        }
    })
    .await
    .unwrap();
    assert!(first > target, "the broker must skip: got {first}");

    let group = format!("gaps-{}", rand::random::<u32>());
    let mut cfg = common::archive_config(&bootstrap, TOPIC, &group, "all", "memory://");
    cfg.kafka.seek_back = 0;
    let store = tally_store::open(&cfg.store).unwrap();
    // An earlier run archived everything below 1,234.
    put_progress(&store, target).await;
    let (stop, task) = start(&cfg, &store);
    wait_archived_to(&store, 0, 3_000).await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    assert_exactly(&archived(&store).await, (target..3_000).map(|o| (0, o)));
}

/// The broker loses its records and the topic is created again: partition
/// 0's progress is beyond the new log's end. Before, the archiver took its
/// stored position as reached, published observations (and so the cut) over
/// records it never archived, and archived only what came past the old
/// position. Now the partition stops (an error and
/// `tally_archive_partition_stopped`): its progress is untouched, nothing of
/// the new log is archived as if it were the old one, not even what arrives
/// later, and the cut cannot pass it. Partition 1, never archived, goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_beyond_the_end_of_the_log_stops_the_partition() {
    let broker = Broker::start().unwrap();
    let bootstrap = broker.bootstrap();
    let b = bootstrap.clone();
    let producer = tokio::task::spawn_blocking(move || {
        kafka::create_topic(&b, TOPIC, 2).unwrap();
        let producer = kafka::producer(&b, 1000).unwrap();
        let mut recs = records(0, 0, 300);
        recs.extend(records(1, 0, 300));
        kafka::produce(&producer, TOPIC, &recs).unwrap();
        producer
    })
    .await
    .unwrap();

    let group = format!("gaps-{}", rand::random::<u32>());
    let cfg = common::archive_config(&bootstrap, TOPIC, &group, "all", "memory://");
    let store = tally_store::open(&cfg.store).unwrap();
    // The old log was archived to 5,000, and seen whole at 01:00.
    let mut old = progress_file(0, 5_000, T0 + HOUR);
    store::put_json(store.as_ref(), &paths::archive_progress(TOPIC, 0), &old)
        .await
        .unwrap();
    let (stop, task) = start(&cfg, &store);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The new log outgrows the old position while the partition is stopped.
    let producer = tokio::task::spawn_blocking(move || {
        let mut recs = records(0, 300, 6_000);
        recs.extend(records(1, 300, 700));
        kafka::produce(&producer, TOPIC, &recs).unwrap();
        producer
    })
    .await
    .unwrap();
    wait_archived_to(&store, 1, 1_000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop.send(());
    let summary = task.await.unwrap().unwrap();
    drop(producer);

    assert_eq!(summary.stopped, 1, "{summary:?}");
    // Claimed (a new owner), nothing else.
    let Some(ProgressFile::V1 { owner, .. }) = progress(&store, 0).await else {
        panic!("no progress for partition 0")
    };
    let ProgressFile::V1 { owner: was, .. } = &mut old;
    *was = owner;
    assert_eq!(progress(&store, 0).await, Some(old), "progress untouched");
    // Nothing of partition 0.
    assert_exactly(&archived(&store).await, (0..1_000).map(|o| (1, o)));
    // The cut stays where partition 0's old observation allows.
    if let Some((CutFile::V1 { cut, .. }, _)) =
        store::get_json::<CutFile>(store.as_ref(), paths::CUT)
            .await
            .unwrap()
    {
        assert!(cut <= (T0 + HOUR) / HOUR, "cut {cut}");
    }
}

/// A producer to a topic of one partition, which gets `records(0, 0, n)`.
async fn topic_with(bootstrap: &str, n: usize) -> BaseProducer {
    let b = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        kafka::create_topic(&b, TOPIC, 1).unwrap();
        let producer = kafka::producer(&b, 1000).unwrap();
        kafka::produce(&producer, TOPIC, &records(0, 0, n)).unwrap();
        producer
    })
    .await
    .unwrap()
}

/// Produce `records(0, first, n)`; the producer back.
async fn produce(producer: BaseProducer, first: usize, n: usize) -> BaseProducer {
    tokio::task::spawn_blocking(move || {
        kafka::produce(&producer, TOPIC, &records(0, first, n)).unwrap();
        producer
    })
    .await
    .unwrap()
}

/// Each archive file's (epoch, first offset), in name order.
async fn files(store: &Arc<dyn ObjectStore>) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = store::list(store.as_ref(), paths::EVENTS_ROOT)
        .await
        .unwrap()
        .iter()
        .filter_map(|f| paths::parse_archive_file(f.location.as_ref()))
        .map(|f| (f.epoch, f.start_offset))
        .collect();
    out.sort_unstable();
    out
}

/// An archiver on partition 0 that rolls at `roll_bytes`, run until the
/// progress reaches `end`.
async fn archive_to(
    cfg: &tally_core::config::Config,
    store: &Arc<dyn ObjectStore>,
    roll_bytes: usize,
    end: i64,
) {
    let mut cfg = cfg.clone();
    cfg.archive.roll_bytes = roll_bytes;
    let (stop, task) = start(&cfg, store);
    wait_archived_to(store, 0, end).await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// Partition 0's stored progress set to `archived_to`: where a crash left
/// it, or a position made by hand.
async fn put_progress(store: &Arc<dyn ObjectStore>, archived_to: i64) {
    store::put_json(
        store.as_ref(),
        &paths::archive_progress(TOPIC, 0),
        &progress_file(0, archived_to, T0),
    )
    .await
    .unwrap();
}

/// A fresh broker with 4,000 records one second apart from 00:00 (offsets
/// 0..3,600 in the first epoch), archived in one roll: one file per epoch.
async fn two_epochs_in_one_roll(
    group: &str,
) -> (
    Broker,
    BaseProducer,
    tally_core::config::Config,
    Arc<dyn ObjectStore>,
) {
    let broker = Broker::start().unwrap();
    let bootstrap = broker.bootstrap();
    let producer = topic_with(&bootstrap, 4_000).await;
    let group = format!("{group}-{}", rand::random::<u32>());
    let mut cfg = common::archive_config(&bootstrap, TOPIC, &group, "all", "memory://");
    cfg.archive.roll_interval = tally_core::config::Millis(3_000);
    let store = tally_store::open(&cfg.store).unwrap();
    archive_to(&cfg, &store, 100_000_000, 4_000).await;
    let e0 = T0 / HOUR;
    assert_eq!(files(&store).await, [(e0, 0), (e0 + 1, 3_600)]);
    (broker, producer, cfg, store)
}

/// A crash between a roll's file writes and its progress write, replayed
/// with other roll boundaries, step by step: the files are durable, the
/// progress still says the roll's first offset. The replay's first roll of
/// each epoch gets the name of the file already there (epoch, partition,
/// first offset). Shorter than that file, it is covered by it, and the
/// records up to the file's last offset are not buffered again: before,
/// they were written again by the next roll, under a new name, twice
/// (`tests/archive_crash.rs` saw that in one run of five). Every produced
/// (partition, offset) is in the master dataset exactly once, across two
/// epochs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_roll_covered_by_a_durable_file_is_archived_once() {
    let (_broker, producer, cfg, store) = two_epochs_in_one_roll("replay").await;
    let e0 = T0 / HOUR;
    // The crash: the files stay, the progress does not move past them.
    put_progress(&store, 0).await;

    // Replayed in rolls of a few dozen records: the first of each epoch is
    // covered by the file; what follows comes in new files.
    let producer = produce(producer, 4_000, 1_000).await;
    archive_to(&cfg, &store, 3_000, 5_000).await;
    assert_exactly(&archived(&store).await, (0..5_000).map(|o| (0, o)));
    let after_short = files(&store).await;
    assert_eq!(after_short[..2], [(e0, 0), (e0 + 1, 3_600)]);
    assert!(
        after_short.len() > 3,
        "rolls of a few dozen records: {after_short:?}"
    );

    // The last of those rolls replayed with more records arrived since:
    // what its file holds is skipped, the new records go into a file of
    // their own.
    let &(_, last_roll) = after_short.last().unwrap();
    put_progress(&store, last_roll).await;
    produce(producer, 5_000, 500).await;
    archive_to(&cfg, &store, 100_000_000, 5_500).await;
    assert_exactly(&archived(&store).await, (0..5_500).map(|o| (0, o)));
    let mut want = after_short;
    want.push((e0 + 1, 5_000));
    assert_eq!(files(&store).await, want);
}

/// A restart from inside a durable file. A covered replay moves the
/// progress as it skips what a file holds, so a crash then leaves the
/// progress inside that file, past its first offset: the restart's first
/// roll gets a new name, and before, it wrote the rest of the file's records
/// again (`tests/archive_crash.rs` failed two runs in three on it). Now the
/// first record of each epoch after the claim looks up the file holding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_inside_a_durable_file_archives_nothing_twice() {
    let (_broker, producer, cfg, store) = two_epochs_in_one_roll("inside").await;
    let e0 = T0 / HOUR;
    // Inside the first epoch's file, and inside the second's.
    for inside in [100, 3_700] {
        put_progress(&store, inside).await;
        archive_to(&cfg, &store, 100_000_000, 4_000).await;
        assert_exactly(&archived(&store).await, (0..4_000).map(|o| (0, o)));
    }
    // Records after the files go into a new one.
    produce(producer, 4_000, 500).await;
    archive_to(&cfg, &store, 100_000_000, 4_500).await;
    assert_exactly(&archived(&store).await, (0..4_500).map(|o| (0, o)));
    assert_eq!(
        files(&store).await,
        [(e0, 0), (e0 + 1, 3_600), (e0 + 1, 4_000)]
    );
}

/// A roll whose file another writer made durable after the archiver first
/// looked for one (a new owner racing a zombie): the roll finds that file on
/// the loop, before its task starts, and the records read next of its epoch,
/// up to the file's last offset, are skipped at once. Before, the check ran
/// in the roll's task and was heard of only when the task ended, while the
/// loop read on and buffered the epoch's next records into a second file:
/// they were archived twice (`tests/archive_crash.rs`, about one run in
/// eight). Here the records after the roll arrive together, as a fetched
/// batch the loop takes before it looks at its roll tasks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_read_while_a_covered_roll_is_checked_are_not_written_twice() {
    // The archiver must have seen the epoch's first records before the
    // file appears; a start slower than the wait is tried again, longer.
    for wait in [3, 10, 30] {
        if covered_after_first_sight(Duration::from_secs(wait)).await {
            return;
        }
    }
    panic!("the archiver never read the first records before the file appeared");
}

/// The scenario above, the file written `wait` after the archiver started;
/// whether the archiver had buffered the first records by then (and so
/// found the file in a roll, the case under test).
async fn covered_after_first_sight(wait: Duration) -> bool {
    let broker = Broker::start().unwrap();
    let producer = topic_with(&broker.bootstrap(), 10).await;
    let group = format!("covered-{}", rand::random::<u32>());
    let mut cfg = common::archive_config(&broker.bootstrap(), TOPIC, &group, "all", "memory://");
    // Rolls of about 30 records, by size only until the test stops it.
    cfg.archive.roll_bytes = 3_000;
    cfg.archive.roll_interval = tally_core::config::Millis(600_000);
    let store = tally_store::open(&cfg.store).unwrap();
    let (stop, task) = start(&cfg, &store);
    tokio::time::sleep(wait).await;
    assert!(files(&store).await.is_empty(), "nothing rolled yet");

    // Another writer makes 0..1,000 durable under the name the archiver's
    // first roll of the epoch will have.
    let grid = cfg.epochs.grid();
    let mut rows = archive_file::ArchiveRows::new(0);
    for (o, r) in records(0, 0, 1_000).iter().enumerate() {
        let limits = cfg.events.limits();
        rows.push(
            TOPIC,
            0,
            o as i64,
            r.timestamp_ms,
            grid,
            &limits,
            &r.payload,
        );
    }
    let path = paths::archive_file(grid.epoch_of(T0), TOPIC, 0, 0);
    let promote = tally_batch::promote::Promote::of(&cfg);
    archive_file::write(store.clone(), &path, &mut rows, &promote)
        .await
        .unwrap();

    // The rest of the epoch arrives at once.
    produce(producer, 10, 1_990).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress(&store, 0)
        .await
        .is_none_or(|p| matches!(p, ProgressFile::V1 { archived_to, .. } if archived_to < 1_900))
    {
        assert!(Instant::now() < deadline, "not archived past 1,900");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    let summary = task.await.unwrap().unwrap();
    let Some(ProgressFile::V1 { archived_to, .. }) = progress(&store, 0).await else {
        panic!("no progress");
    };
    // Every record up to where the archiver got, once.
    assert_exactly(&archived(&store).await, (0..archived_to).map(|o| (0, o)));
    // Records buffered beyond those after the file: the first ones, read
    // before the file appeared and found covered by the roll.
    let after_file = (archived_to - 1_000) as u64;
    summary.records >= after_file + 10
}

/// The archiver's seek further back, refused by librdkafka: the partition is
/// unassigned in librdkafka right before that seek (the one way a seek
/// really fails there, "Local: Erroneous state") and comes back only after
/// sixty failed tries (more than one seek call's fifty, so the seek is left
/// pending for the next tick), assigned at the end of its log, past records
/// produced meanwhile. The seek stays pending and is tried again, nothing
/// of the partition is taken until it succeeds, and every record from the
/// claimed position on is archived exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seek_back_that_fails_is_retried_and_skips_nothing() {
    // Resuming mid-batch with no seek-back: the first record is past the
    // target, so the partition seeks further back.
    seek_fails_then_comes_back(0, 60).await;
}

/// The seek at a claim, refused by librdkafka for a whole call (fifty
/// tries; the partition is unassigned in librdkafka right before it), after
/// which the partition comes back at the end of its log, past records
/// produced meanwhile. Before, the archiver then read on from where the
/// partition was assigned, taking that for the log's start: the first
/// record to arrive (at the end) was taken as a gap, and everything from the
/// claimed position to there was never archived. Now the seek stays
/// pending and is tried again at the next tick, nothing is taken until it
/// works, and every record from the claimed position on is archived once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_seek_that_fails_is_retried_and_skips_nothing() {
    seek_fails_then_comes_back(10_000, 50).await;
}

/// Partition 0 archived to 1,234 of 3,000 records; the archiver's next
/// re-seek (at its claim, or further back) fails `failures` times, and the
/// partition comes back at the end of its log once 1,000 more records are
/// there. Another 1,000 follow; every record from 1,234 on is archived once.
async fn seek_fails_then_comes_back(seek_back: i64, failures: u32) {
    let broker = Broker::start().unwrap();
    let bootstrap = broker.bootstrap();
    let producer = topic_with(&bootstrap, 3_000).await;
    let group = format!("gaps-{}", rand::random::<u32>());
    let mut cfg = common::archive_config(&bootstrap, TOPIC, &group, "all", "memory://");
    cfg.kafka.seek_back = seek_back;
    let store = tally_store::open(&cfg.store).unwrap();
    let target = 1_234;
    put_progress(&store, target).await;
    let failed = fail_seeks_from_next_reseek(TOPIC, 0, failures);
    let (stop, task) = start(&cfg, &store);
    let deadline = Instant::now() + Duration::from_secs(30);
    while failed.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no seek failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Past the end a consumer that took the failed seek as done reads on from.
    let producer = produce(producer, 3_000, 1_000).await;
    while failed.load(Ordering::SeqCst) < failures {
        assert!(
            Instant::now() < deadline,
            "the seek failed only {failed:?} times"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    produce(producer, 4_000, 1_000).await;
    wait_archived_to(&store, 0, 5_000).await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    assert_exactly(&archived(&store).await, (target..5_000).map(|o| (0, o)));
}
