//! Gaps never taken as progress, against the real broker and Redis: a seek
//! that lands past its target, a stored offset beyond the end of the log
//! (the broker lost its records and the topic was created again), and a
//! seek that fails during a resync. Compared with the plain fold of exactly
//! the records that must be counted.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use redis::Commands;
use tally_core::config::Assignment;
use tally_core::keys::Keys;
use tally_kafka::fault::fail_seeks_from_next_reseek;
use tally_speed::apply::{Applier, Outcome};
use tally_speed::delta::Folder;
use tally_testkit::{kafka, runtime, Broker, Redis};

/// The first record a fetch at `offset` of partition 0 returns.
fn first_record_at(bootstrap: &str, offset: i64) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "probe")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Offset(offset))
        .unwrap();
    c.assign(&tpl).unwrap();
    for _ in 0..100 {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            return m.offset();
        }
    }
    panic!("no record after offset {offset}");
}

fn offsets(redis_url: &str) -> HashMap<String, i64> {
    let mut con = redis::Client::open(redis_url)
        .unwrap()
        .get_connection()
        .unwrap();
    con.hgetall(Keys::new("t").offsets()).unwrap()
}

/// Resuming mid-batch with no seek-back at all: Tansu answers the seek with
/// the next record batch. Before, the first record after the seek was only
/// logged and the rest of the batch was lost (the chunk's range started at
/// the stored offset, so the fence accepted it); now the partition seeks
/// further back until a record at or below its target arrives.
#[test]
fn a_seek_that_lands_past_its_target_seeks_further_back() {
    let broker = Broker::start().unwrap();
    let redis = Redis::start().unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 1).unwrap();
    let evs = events(21, 3_000, 1, base_ms(), 5.0);
    let recs = records(&evs, 0);
    let producer = kafka::producer(&broker.bootstrap(), 1000).unwrap();
    kafka::produce(&producer, TOPIC, &recs).unwrap();
    // Some earlier run applied everything below 1,234.
    let target = 1_234;
    let skipped_to = first_record_at(&broker.bootstrap(), target);
    assert!(
        skipped_to > target,
        "the broker must skip: got {skipped_to}"
    );
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = con
        .hset(
            Keys::new("t").offsets(),
            Keys::offset_field(TOPIC, 0),
            target,
        )
        .unwrap();

    let rt = runtime();
    let mut cfg = config(&broker.bootstrap(), &redis.url(), "gaps1");
    cfg.kafka.seek_back = 0;
    let speed = start(&rt, &cfg);
    wait_caught_up(&redis.url(), &ends(&recs, 1), Duration::from_secs(60));
    speed.stop(&rt);
    assert_exact(&redis.url(), &evs[target as usize..]);
}

/// The broker loses its records (a memory broker restarted) and the topic is
/// created again: Redis stores offsets beyond the new logs' ends. Before,
/// reading on took every new record below the stored offset for one already
/// counted and dropped it. Now each such partition stops with an error (and
/// `tally_speed_partition_stopped`): nothing of the new log is counted, not
/// even what arrives later, until the operator deletes the stored offsets;
/// the partitions are then rebuilt from the start of the new log, exactly.
#[test]
fn a_stored_offset_beyond_the_end_of_the_log_stops_the_partition() {
    let mut broker = Broker::start().unwrap();
    let redis = Redis::start().unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 2).unwrap();
    let t0 = base_ms();
    let old = events(31, 2_000, 2, t0, 5.0);
    let producer = kafka::producer(&broker.bootstrap(), 1000).unwrap();
    kafka::produce(&producer, TOPIC, &records(&old, 0)).unwrap();
    let rt = runtime();
    let cfg = config(&broker.bootstrap(), &redis.url(), "gaps2");
    let speed = start(&rt, &cfg);
    wait_caught_up(
        &redis.url(),
        &ends(&records(&old, 0), 2),
        Duration::from_secs(60),
    );
    speed.stop(&rt);
    let stored = offsets(&redis.url());

    // The broker forgets; the topic comes back with shorter logs.
    drop(producer);
    broker.restart().unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 2).unwrap();
    let new = events(32, 3_000, 2, t0 + 20_000, 5.0);
    let producer = kafka::producer(&broker.bootstrap(), 1000).unwrap();
    kafka::produce(&producer, TOPIC, &records(&new[..300], 0)).unwrap();
    let speed = start(&rt, &cfg);
    // Time to find both logs short; then the logs outgrow the stored
    // offsets while the partitions stay stopped.
    std::thread::sleep(Duration::from_secs(5));
    kafka::produce(&producer, TOPIC, &records(&new[300..], 0)).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let summary = speed.stop(&rt);
    assert_eq!(summary.stopped, 2, "{summary:?}");
    assert_eq!(summary.events, 0, "{summary:?}");
    assert_eq!(offsets(&redis.url()), stored, "stored offsets untouched");
    assert_exact(&redis.url(), &old);

    // The operator's fix: forget the offsets, and that they were stored (the
    // stopped partitions' message says so); the partitions are rebuilt from
    // the start of the new logs.
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys = Keys::new("t");
    let _: () = con.del(&[keys.offsets(), keys.seen()]).unwrap();
    let speed = start(&rt, &cfg);
    wait_caught_up(
        &redis.url(),
        &ends(&records(&new, 0), 2),
        Duration::from_secs(60),
    );
    let summary = speed.stop(&rt);
    assert_eq!(summary.stopped, 0, "{summary:?}");
    let all: Vec<Ev> = old.iter().chain(&new).cloned().collect();
    assert_exact(&redis.url(), &all);
}

/// A seek that librdkafka refuses during a resync. Another member applies
/// partition 0's next records first, so the layer's own chunk of them is
/// fenced and it re-reads every partition, partition 0 from what Redis now
/// stores; right then partition 0 is unassigned in librdkafka (the one way
/// a seek really fails there: "Local: Erroneous state"), and it comes back
/// only after ten failed tries, assigned at the end of its log, past records
/// produced meanwhile. Before, a failed seek still reset the position, so
/// reading went on from the end and the next chunk (starting at the stored
/// offset) skipped those records with the fence's blessing. Now the seek is
/// retried (logged, `tally_speed_seek_failures_total`), nothing of the
/// partition is taken until it succeeds, and Redis equals the fold of every
/// record, each once.
#[test]
fn a_seek_that_fails_during_a_resync_is_retried_and_skips_nothing() {
    let broker = Broker::start().unwrap();
    let redis = Redis::start().unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 2).unwrap();
    let evs = events(51, 8_000, 2, base_ms(), 2.0);
    let (before, rest) = evs.split_at(3_000);
    let (other, rest) = rest.split_at(1_000);
    let (meanwhile, after) = rest.split_at(2_000);
    let producer = kafka::producer(&broker.bootstrap(), 1000).unwrap();
    kafka::produce(&producer, TOPIC, &records(before, 0)).unwrap();

    let rt = runtime();
    let mut cfg = config(&broker.bootstrap(), &redis.url(), "gaps3");
    cfg.kafka.assignment = Assignment::All;
    let speed = start(&rt, &cfg);
    let caught_up = ends(&records(before, 0), 2);
    wait_caught_up(&redis.url(), &caught_up, Duration::from_secs(60));

    // Another member applies partition 0's part of `other` before the layer
    // reads it; the layer's chunk of it is then fenced.
    let failed = fail_seeks_from_next_reseek(TOPIC, 0, 10);
    let mut folder = Folder::new(cfg.views.clone(), cfg.epochs.grid());
    let other_0: Vec<Ev> = other.iter().filter(|e| e.partition == 0).cloned().collect();
    let chunk = chunk(&mut folder, &other_0, [caught_up[0], caught_up[1]], false);
    let mut applier = rt.block_on(Applier::connect(&cfg)).unwrap();
    let applied = rt.block_on(applier.apply(&chunk, &folder, base_ms()));
    assert_eq!(applied.unwrap(), Outcome::Applied);
    kafka::produce(&producer, TOPIC, &records(other, 0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while failed.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no resync seek failed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Produced while the seek fails: past the end a consumer that took the
    // failed seek as done would read on from.
    kafka::produce(&producer, TOPIC, &records(meanwhile, 0)).unwrap();
    while failed.load(Ordering::SeqCst) < 10 {
        assert!(
            Instant::now() < deadline,
            "the seek failed only {failed:?} times"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    kafka::produce(&producer, TOPIC, &records(after, 0)).unwrap();
    wait_caught_up(
        &redis.url(),
        &ends(&records(&evs, 0), 2),
        Duration::from_secs(60),
    );
    let summary = speed.stop(&rt);
    assert!(summary.fenced >= 1, "{summary:?}");
    assert_exact(&redis.url(), &evs);
}
