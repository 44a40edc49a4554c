//! The speed layer as a consumer-group member against a real broker (a
//! private Tansu) and Redis: two members in one process and one group split
//! the partitions while records are produced, and Redis holds exactly the
//! plain fold of the events, also when one member leaves mid-stream.
//!
//! In-process because Tansu 0.6 does not hand a SIGKILLed member's
//! partitions to the survivors (the process-level group test in
//! `tests/speed_crash.rs` is ignored for that); a member that leaves as
//! `tally speed` does on SIGTERM (flush, then LeaveGroup when its consumer
//! closes) is handed over correctly, and that is the group path under test:
//! assignment from the offsets in Redis, seek-back, revocation with a flush,
//! and the fence between the two members.

mod common;

use std::time::Duration;

use common::*;
use tally_core::config::{Config, Millis};
use tally_testkit::kafka::{self, Record};
use tally_testkit::{runtime, Broker, Redis};

const PARTITIONS: i32 = 4;

/// The standard test config with a three-second flush interval, while
/// records arrive every few hundred milliseconds: a member then holds
/// folded, unflushed records when a rebalance takes its partitions, which is
/// the case the revocation path must get right (flush them first).
fn group_config(broker: &Broker, redis: &Redis, group: &str) -> Config {
    let mut cfg = config(&broker.bootstrap(), &redis.url(), group);
    cfg.speed.flush_interval = Millis(3000);
    cfg
}

fn setup() -> (Broker, Redis, String) {
    let broker = Broker::start().expect("start tansu");
    let redis = Redis::start().expect("start redis");
    kafka::create_topic(&broker.bootstrap(), TOPIC, PARTITIONS).expect("topic");
    kafka::create_topic(&broker.bootstrap(), "dead", 1).expect("dead-letter topic");
    let group = format!("speed-group-{}", rand::random::<u32>());
    (broker, redis, group)
}

/// [`kafka::produce_paced`] on a thread of its own.
fn produce_paced(
    bootstrap: &str,
    records: Vec<Record>,
    slices: usize,
    pause: Duration,
) -> std::thread::JoinHandle<()> {
    let bootstrap = bootstrap.to_owned();
    std::thread::spawn(move || {
        kafka::produce_paced(&bootstrap, TOPIC, &records, slices, pause).expect("produce")
    })
}

/// Wait until Redis stores an offset for every partition: a member has
/// applied a chunk from each.
fn wait_every_partition_applied(redis_url: &str, timeout: Duration) {
    let mut con = redis::Client::open(redis_url)
        .and_then(|c| c.get_connection())
        .expect("redis");
    let start = std::time::Instant::now();
    loop {
        let n: i32 = redis::cmd("HLEN").arg("t:off").query(&mut con).unwrap_or(0);
        if n == PARTITIONS {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "only {n} partitions applied after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_members_in_one_group_split_the_partitions_exactly() {
    let (broker, redis, group) = setup();
    let evs = events(31, 120_000, PARTITIONS, base_ms(), 30.0);
    let recs = records(&evs, 0);
    let rt = runtime();
    let cfg = group_config(&broker, &redis, &group);

    // The second member joins mid-stream, once the first has applied every
    // partition: the first gives partitions up while it holds records of
    // them, and both resume them from what Redis stores.
    let a = start(&rt, &cfg);
    let producing = produce_paced(
        &broker.bootstrap(),
        recs.clone(),
        12,
        Duration::from_millis(500),
    );
    wait_every_partition_applied(&redis.url(), Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(1000));
    let b = start(&rt, &cfg);
    producing.join().expect("producer thread");
    wait_caught_up(
        &redis.url(),
        &ends(&recs, PARTITIONS),
        Duration::from_secs(240),
    );
    let (sa, sb) = (a.stop(&rt), b.stop(&rt));
    eprintln!("a: {sa:?}\nb: {sb:?}");
    assert!(
        sa.events > 0 && sb.events > 0,
        "both members applied events (the group split the partitions)"
    );
    assert_exact(&redis.url(), &evs);
}

#[test]
fn a_member_leaving_mid_stream_hands_its_partitions_over_exactly() {
    let (broker, redis, group) = setup();
    let evs = events(32, 120_000, PARTITIONS, base_ms(), 30.0);
    let recs = records(&evs, 0);
    let (first, rest) = recs.split_at(recs.len() / 2);
    let rt = runtime();
    let cfg = group_config(&broker, &redis, &group);

    let a = start(&rt, &cfg);
    let b = start(&rt, &cfg);
    produce_paced(
        &broker.bootstrap(),
        first.to_vec(),
        5,
        Duration::from_millis(500),
    )
    .join()
    .expect("producer thread");
    // Leave while records are still arriving: the survivor gives up its own
    // partitions at the rebalance (holding records of them) and takes all
    // back, the leaver's from the offsets the leaver stored last.
    let producing = produce_paced(
        &broker.bootstrap(),
        rest.to_vec(),
        10,
        Duration::from_millis(300),
    );
    std::thread::sleep(Duration::from_millis(700));
    let sa = a.stop(&rt);
    producing.join().expect("producer thread");
    wait_caught_up(
        &redis.url(),
        &ends(&recs, PARTITIONS),
        Duration::from_secs(240),
    );
    let sb = b.stop(&rt);
    eprintln!("a: {sa:?}\nb: {sb:?}");
    assert!(sa.events > 0, "the leaver applied its share before leaving");
    assert!(
        sb.events > 0,
        "the survivor applied its share and the leaver's"
    );
    assert_exact(&redis.url(), &evs);
}
