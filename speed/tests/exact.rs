//! The speed layer against a real broker and Redis, compared with a plain fold
//! over the produced events.

mod common;

use std::time::Duration;

use common::*;
use tally_core::config::Assignment;
use tally_testkit::{kafka, runtime, Broker, Redis, RedisCluster};

#[test]
fn a_million_events_over_two_views_are_exact() {
    let broker = Broker::start().unwrap();
    let redis = Redis::start().unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 4).unwrap();
    // Kafka time spans ~3 hours: several ingest epochs and late events across days.
    let evs = events(1, 1_000_000, 4, base_ms(), 10.8);
    let producer = kafka::producer(&broker.bootstrap(), 1000).unwrap();
    let recs = records(&evs, 0);
    kafka::produce(&producer, TOPIC, &recs).unwrap();
    let ends = ends(&recs, 4);

    let rt = runtime();
    let cfg = config(&broker.bootstrap(), &redis.url(), "g1");
    let speed = start(&rt, &cfg);
    wait_caught_up(&redis.url(), &ends, Duration::from_secs(300));
    speed.stop(&rt);
    assert_exact(&redis.url(), &evs);
}

#[test]
fn redis_restarted_empty_mid_stream_is_rebuilt_exactly() {
    let broker = Broker::start().unwrap();
    let mut redis = Redis::start().unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 2).unwrap();
    let evs = events(2, 60_000, 2, base_ms(), 10.0);
    let producer = kafka::producer(&broker.bootstrap(), 500).unwrap();
    let (first, second) = evs.split_at(30_000);
    let mut recs = records(first, 0);
    kafka::produce(&producer, TOPIC, &recs).unwrap();

    let rt = runtime();
    let cfg = config(&broker.bootstrap(), &redis.url(), "g2");
    let speed = start(&rt, &cfg);
    wait_caught_up(&redis.url(), &ends(&recs, 2), Duration::from_secs(120));

    redis.restart_empty().unwrap();
    let more = records(second, 0);
    kafka::produce(&producer, TOPIC, &more).unwrap();
    recs.extend(more);
    let ends = ends(&recs, 2);
    wait_caught_up(&redis.url(), &ends, Duration::from_secs(120));
    speed.stop(&rt);
    assert_exact(&redis.url(), &evs);
}

#[test]
fn malformed_events_go_to_the_dead_letter_topic_with_their_reason() {
    let broker = Broker::start().unwrap();
    let redis = Redis::start().unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 2).unwrap();
    kafka::create_topic(&broker.bootstrap(), "dead", 1).unwrap();
    let evs = events(3, 20_000, 2, base_ms(), 10.0);
    let mut recs = records(&evs, 0);
    let base = base_ms();
    let big = format!(
        r#"{{"event_id":"x","event_type":"t","timestamp":{base},"properties":{{"p":"{}"}}}}"#,
        "x".repeat(70_000)
    );
    let bad: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("not_utf8", "\u{fffd}".into()), // replaced below by invalid bytes
        ("not_json", "{not json".into()),
        ("not_object", "[1,2,3]".into()),
        (
            "missing_field",
            format!(r#"{{"event_type":"t","timestamp":{base}}}"#),
        ),
        (
            "wrong_type",
            format!(r#"{{"event_id":1,"event_type":"t","timestamp":{base}}}"#),
        ),
        (
            "empty_field",
            format!(r#"{{"event_id":"","event_type":"t","timestamp":{base}}}"#),
        ),
        (
            "duplicate_field",
            format!(r#"{{"event_id":"a","event_id":"b","event_type":"t","timestamp":{base}}}"#),
        ),
        (
            "bad_timestamp",
            r#"{"event_id":"a","event_type":"t","timestamp":"noon"}"#.into(),
        ),
        (
            "timestamp_out_of_range",
            r#"{"event_id":"a","event_type":"t","timestamp":0}"#.into(),
        ),
        (
            "property_not_scalar",
            format!(
                r#"{{"event_id":"a","event_type":"t","timestamp":{base},"properties":{{"p":[1]}}}}"#
            ),
        ),
        ("too_large", big),
    ];
    let mut expected = Vec::new();
    for (i, (code, text)) in bad.iter().enumerate() {
        let payload = if *code == "not_utf8" {
            vec![b'{', 0xff, 0xfe, b'}']
        } else {
            text.clone().into_bytes()
        };
        let at = 1000 + i * 1500;
        recs.insert(
            at,
            kafka::Record {
                partition: (i % 2) as i32,
                payload,
                timestamp_ms: base + 1000,
            },
        );
        expected.push(*code);
    }
    let producer = kafka::producer(&broker.bootstrap(), 1000).unwrap();
    kafka::produce(&producer, TOPIC, &recs).unwrap();
    let ends = ends(&recs, 2);

    let rt = runtime();
    let cfg = config(&broker.bootstrap(), &redis.url(), "g3");
    let speed = start(&rt, &cfg);
    wait_caught_up(&redis.url(), &ends, Duration::from_secs(120));
    speed.stop(&rt);
    assert_exact(&redis.url(), &evs);

    // Read the count expected, not up to the high watermark: Tansu 0.6
    // reports the last batch's base offset + 1, which cut the read short.
    let dead = kafka::read_n(&broker.bootstrap(), "dead", 1, expected.len()).unwrap();
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|d| {
            d.headers
                .iter()
                .find(|(k, _)| k == "tally.reason")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect();
    reasons.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(reasons, want);
    for d in &dead {
        let h = |k: &str| {
            d.headers
                .iter()
                .find(|(x, _)| x == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(h("tally.source.topic").as_deref(), Some(TOPIC));
        let p: i32 = h("tally.source.partition").unwrap().parse().unwrap();
        let o: i64 = h("tally.source.offset").unwrap().parse().unwrap();
        assert!(p < 2 && o >= 0);
        assert!(!h("tally.error").unwrap().is_empty());
    }
}

/// On a Redis Cluster (3 masters, 8 partitions in 4 partition groups, so
/// one script call per group and flush): two speed layers read every
/// partition (each chunk of one is a replay for the other, fenced group by
/// group), the first is killed mid-stream (its unflushed deltas lost, a
/// call perhaps half-way through its groups), more records arrive, and the
/// counters in the cluster equal the fold.
#[test]
fn on_a_redis_cluster_a_replaying_pair_and_a_crash_stay_exact() {
    let broker = Broker::start().unwrap();
    let cluster = RedisCluster::start(3, 0).unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 8).unwrap();
    let evs = events(21, 160_000, 8, base_ms(), 67.5);
    let producer = kafka::producer(&broker.bootstrap(), 1000).unwrap();
    let (first, second) = evs.split_at(80_000);
    let mut recs = records(first, 0);
    kafka::produce(&producer, TOPIC, &recs).unwrap();

    let rt = runtime();
    let mut cfg = cluster_config(&broker.bootstrap(), &cluster, 4, "gc1");
    cfg.kafka.assignment = Assignment::All;
    let layout = cfg.redis.layout();
    let mut con = cluster_con(&cluster.seeds());
    let a = start(&rt, &cfg);
    let b = start(&rt, &cfg);
    // Kill `a` once some of its work is in: no flush, no goodbye.
    let t = std::time::Instant::now();
    while stored_offsets(&mut con, &layout).values().sum::<i64>() < 20_000 {
        assert!(t.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    a.task.abort();
    let more = records(second, 0);
    kafka::produce(&producer, TOPIC, &more).unwrap();
    recs.extend(more);
    wait_caught_up_in(&mut con, &layout, &ends(&recs, 8), Duration::from_secs(300));
    let summary = b.stop(&rt);
    eprintln!("survivor: {summary:?}");
    assert_exact_in(&mut con, &layout, &cfg, &evs);
    // Every group holds its own partitions' offsets, and only those.
    for p in 0..8 {
        let off: Option<i64> = redis::cmd("HGET")
            .arg(layout.keys_of(p).offsets())
            .arg(format!("{TOPIC}/{p}"))
            .query(&mut con)
            .unwrap();
        assert!(off.is_some(), "partition {p}");
        let other: Option<i64> = redis::cmd("HGET")
            .arg(layout.keys_of(p + 1).offsets())
            .arg(format!("{TOPIC}/{p}"))
            .query(&mut con)
            .unwrap();
        assert_eq!(other, None, "partition {p} only in its group");
    }
}
