//! Faults injected into the real services: what used to wedge the speed layer
//! or double its counts, and what it does now, compared with the plain fold.

mod common;

use std::time::Duration;

use common::*;
use redis::Commands;
use tally_core::keys::{CounterField, Keys, Part};
use tally_testkit::{kafka, runtime, Redis};

/// The fault found in the wild: two values of 6e18 a second apart overflowed
/// Redis's `HINCRBY` half-way through the apply script, which kept its earlier
/// writes; the flusher retried forever, adding them again each time, and every
/// partition stopped (a count of 36 where 1,002 were sent). Integer sums are
/// now exact past 2^63 (a carry field), and the script never fails half-way.
#[test]
fn sums_past_i64_are_exact_and_nothing_wedges() {
    let (broker, redis) = services(2);
    let t0 = base_ms();
    let mut evs = vec![
        amount_event("big1", "up", "6000000000000000000", t0),
        amount_event("big2", "up", "6000000000000000000", t0 + 1000),
    ];
    // The same past -2^63, in another group, in several flushes' worth of time.
    for i in 0..3 {
        evs.push(amount_event(
            &format!("neg{i}"),
            "down",
            "-9000000000000000000",
            t0 + 2000 + i,
        ));
    }
    evs.extend(events(11, 1_000, 2, t0 + 3_000, 10.0));
    let producer = kafka::producer(&broker.bootstrap(), 100).unwrap();
    let recs = records(&evs, 0);
    kafka::produce(&producer, TOPIC, &recs).unwrap();

    let rt = runtime();
    let cfg = config(&broker.bootstrap(), &redis.url(), "faults1");
    run_until_counted(&rt, &cfg, &recs, 2, &evs, Duration::from_secs(120));

    // The carry path was taken, in both directions.
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys = Keys::new("t");
    let members: Vec<String> = con.zrange(keys.slices("by_type"), 0, -1).unwrap();
    let mut carries = Vec::new();
    for m in members {
        let (e, d) = Keys::parse_slice_member(&m).unwrap();
        let fields: std::collections::HashMap<String, i64> =
            con.hgetall(keys.counters("by_type", e, d)).unwrap();
        for (f, v) in fields {
            if CounterField::parse(&f).unwrap().part == Part::SumCarry {
                carries.push(v);
            }
        }
    }
    // How much is carried depends on how the events fell into flushes; that
    // both groups carried does not.
    assert!(
        carries.iter().any(|&c| c > 0) && carries.iter().any(|&c| c < 0),
        "{carries:?}"
    );
}

/// A key of the wrong type, or a counter holding text, is something Tally did
/// not write: the chunk that meets it applies nothing at all (not its earlier
/// slices, not its offsets) and the speed layer stops with an error naming the
/// key, instead of retrying forever.
#[test]
fn a_foreign_value_in_redis_stops_the_layer_with_nothing_applied() {
    let (broker, redis) = services(1);
    let t0 = base_ms();
    let evs: Vec<Ev> = (0..50)
        .map(|i| amount_event(&format!("e{i}"), "x", "7", t0 + i))
        .collect();
    let recs = records(&evs, 0);
    let producer = kafka::producer(&broker.bootstrap(), 100).unwrap();
    kafka::produce(&producer, TOPIC, &recs).unwrap();

    // The `daily` slice these events fold into, made a string by someone else.
    let cfg = config(&broker.bootstrap(), &redis.url(), "faults2");
    let grid = cfg.epochs.grid();
    let keys = Keys::new("t");
    let daily = keys.counters("daily", grid.epoch_of(t0), tally_core::time::day_of(t0));
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = con.set(&daily, "not a hash").unwrap();

    let rt = runtime();
    let speed = start(&rt, &cfg);
    let err = speed
        .wait(&rt)
        .expect_err("a foreign value is an error")
        .to_string();
    assert!(err.contains(&daily), "the error names the key: {err}");
    // Nothing was applied: no offsets, and no counters of the other views.
    let offsets: std::collections::HashMap<String, String> = con.hgetall(keys.offsets()).unwrap();
    assert!(offsets.is_empty(), "{offsets:?}");
    let by_type: Vec<String> = con.zrange(keys.slices("by_type"), 0, -1).unwrap();
    assert!(by_type.is_empty(), "{by_type:?}");

    // Once the key is gone, a restart counts everything exactly once.
    let _: () = con.del(&daily).unwrap();
    run_until_counted(&rt, &cfg, &recs, 1, &evs, Duration::from_secs(60));
}

/// The carry itself, one chunk at a time: three chunks of 9e18 each into one
/// group push the integer field past 2^63 on the third, which the script
/// turns into a carry instead of an error.
#[test]
fn a_sum_field_about_to_overflow_carries_instead() {
    use tally_core::event::{decode, Limits};
    use tally_speed::apply::{Applier, Outcome};
    use tally_speed::delta::{At, Chunk, Folder, Range, Unflushed};

    let redis = Redis::start().unwrap();
    let rt = runtime();
    let cfg = config("127.0.0.1:9", &redis.url(), "faults3");
    let mut applier = rt.block_on(Applier::connect(&cfg)).unwrap();
    let mut folder = Folder::new(cfg.views.clone(), cfg.epochs.grid());
    let t0 = base_ms();
    let mut all = Vec::new();
    for (i, amount) in [
        "9000000000000000000",
        "9000000000000000000",
        "9000000000000000000",
        "-1",
    ]
    .iter()
    .enumerate()
    {
        let e = amount_event(&format!("c{i}"), "x", amount, t0 + i as i64);
        let mut delta = Unflushed::default();
        let event = decode(&e.g.payload, e.g.kafka_ts_ms, &Limits::default()).unwrap();
        let at = At {
            topic: TOPIC,
            partition: e.partition,
            offset: i as i64,
            kafka_ts_ms: e.g.kafka_ts_ms,
        };
        folder.fold(&mut delta, 0, at, &event);
        let (slices, events) = delta.take();
        let chunk = Chunk {
            generation: 1,
            ranges: vec![Range {
                topic: TOPIC.into(),
                partition: 0,
                start: i as i64,
                end: i as i64 + 1,
                fresh: i == 0,
            }],
            slices,
            events,
        };
        let outcome = rt.block_on(applier.apply(&chunk, &folder, t0)).unwrap();
        assert_eq!(outcome, Outcome::Applied, "chunk {i}");
        all.push(e);
        assert_exact(&redis.url(), &all);
    }
}

/// A quantile sketch key (a hash of bucket -> count) that holds something
/// else, or a bucket field that is not a count: the chunk applies nothing
/// (a bad bucket is found while adding: the buckets added before it are
/// taken back) and the layer stops naming the key.
#[test]
fn a_foreign_quantile_sketch_stops_the_layer_with_nothing_applied() {
    let (broker, redis) = services(1);
    let t0 = base_ms();
    let evs: Vec<Ev> = (0..20)
        .map(|i| {
            let mut e = amount_event(&format!("q{i}"), "x", "7", t0 + i);
            let payload = format!(
                r#"{{"event_id":"q{i}","event_type":"click","timestamp":{},"properties":{{"page":"/p1","duration":{}}}}}"#,
                t0 + i,
                i + 1
            );
            e.g.payload = payload.into_bytes();
            e
        })
        .collect();
    let recs = records(&evs, 0);
    let producer = kafka::producer(&broker.bootstrap(), 100).unwrap();
    kafka::produce(&producer, TOPIC, &recs).unwrap();

    // The `daily` view's `durations` sketch of the day these events are in.
    let cfg = config(&broker.bootstrap(), &redis.url(), "faults-q");
    let grid = cfg.epochs.grid();
    let keys = Keys::new("t");
    let day = tally_core::time::day_of(t0);
    let key = format!(
        "{}{}",
        keys.quantile_prefix("daily", grid.epoch_of(t0), day),
        tally_core::keys::SketchField::encode(day * 86_400_000, "durations", "[]")
    );
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let rt = runtime();
    for (foreign, what) in [("string", "not a hash"), ("field", "not a count")] {
        let _: () = con.del(&key).unwrap();
        if foreign == "string" {
            let _: () = con.set(&key, "not a hash").unwrap();
        } else {
            // The largest duration's bucket: the last one added to this
            // sketch, after the others (and maybe other sketches).
            let last = tally_core::quantile::index_of(20.0).unwrap().encode();
            let _: () = con.hset(&key, &last, "many").unwrap();
        }
        let err = start(&rt, &cfg)
            .wait(&rt)
            .expect_err("a foreign value is an error")
            .to_string();
        assert!(err.contains(&key) && err.contains(what), "{foreign}: {err}");
        let offsets: std::collections::HashMap<String, String> =
            con.hgetall(keys.offsets()).unwrap();
        assert!(offsets.is_empty(), "{foreign}: {offsets:?}");
        // Nothing else was written, or was taken back: only the foreign key
        // is left, as it was.
        let left: Vec<String> = con.keys("*").unwrap();
        assert_eq!(left, vec![key.clone()], "{foreign}");
        if foreign == "field" {
            let fields: std::collections::HashMap<String, String> = con.hgetall(&key).unwrap();
            assert_eq!(fields.len(), 1, "{fields:?}");
        }
    }
    // Once the key is gone, a restart counts everything exactly once.
    let _: () = con.del(&key).unwrap();
    run_until_counted(&rt, &cfg, &recs, 1, &evs, Duration::from_secs(60));
}
