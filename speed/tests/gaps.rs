//! Gaps never taken as progress, against the real broker and Redis: a seek
//! that lands past its target, and a stored offset beyond the end of the log
//! (the broker lost its records and the topic was created again). Compared
//! with the plain fold of exactly the records that must be counted.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use redis::Commands;
use tally_core::keys::Keys;
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
