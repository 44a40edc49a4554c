//! The speed layer against a real broker and Redis, compared with a plain fold
//! over the produced events.

mod common;

use std::time::Duration;

use common::*;
use tally_testkit::{kafka, runtime, Broker, Redis};

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
