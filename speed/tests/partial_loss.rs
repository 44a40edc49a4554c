//! Redis that loses part of the speed layer's state: an offset gone while the
//! counters it covers stay (an `allkeys-*` eviction, a manual DEL), or a
//! slice's keys gone before their time while the offsets stay (a `volatile-*`
//! eviction). Before, the first was rebuilt over (counted twice) and the
//! second written over (silently short). Now the apply script's marker
//! notices both and the layer stops with an error, nothing applied. Real
//! Tansu and Redis, against the plain fold.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use redis::Commands;
use tally_core::keys::Keys;
use tally_speed::SpeedError;
use tally_testkit::{kafka, runtime};

#[test]
fn offsets_lost_while_the_counters_stay_are_reported_not_rebuilt_over() {
    let (broker, redis) = services(2);
    let evs = events(61, 2_000, 2, base_ms(), 10.0);
    let recs = records(&evs, 0);
    let producer = kafka::producer(&broker.bootstrap(), 100).unwrap();
    kafka::produce(&producer, TOPIC, &recs).unwrap();
    let rt = runtime();
    let cfg = config(&broker.bootstrap(), &redis.url(), "loss1");
    run_until_counted(&rt, &cfg, &recs, 2, &evs, Duration::from_secs(60));

    // The offsets vanish; the counters stay.
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys = Keys::new("t");
    let _: () = con.del(keys.offsets()).unwrap();
    let err = start(&rt, &cfg)
        .wait(&rt)
        .expect_err("a partial loss stops the layer");
    assert!(matches!(err, SpeedError::PartialLoss(_)), "{err}");
    assert!(err.to_string().contains("t:seen"), "{err}");
    // Nothing rebuilt over the counters: still the fold, once.
    assert_exact(&redis.url(), &evs);
    let offsets: HashMap<String, i64> = con.hgetall(keys.offsets()).unwrap();
    assert!(offsets.is_empty(), "{offsets:?}");
}

#[test]
fn a_slice_lost_before_its_time_is_reported_not_written_over() {
    let (broker, redis) = services(1);
    let t0 = base_ms();
    let first = events(62, 1_000, 1, t0, 10.0);
    let recs = records(&first, 0);
    let producer = kafka::producer(&broker.bootstrap(), 100).unwrap();
    kafka::produce(&producer, TOPIC, &recs).unwrap();
    let rt = runtime();
    let cfg = config(&broker.bootstrap(), &redis.url(), "loss2");
    run_until_counted(&rt, &cfg, &recs, 1, &first, Duration::from_secs(60));

    // The `page_views` slice of the first events' epoch and day loses its
    // keys, long before they are due to expire.
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys = Keys::new("t");
    let grid = cfg.epochs.grid();
    let (epoch, day) = (grid.epoch_of(t0), tally_core::time::day_of(t0));
    let cells = keys.cells("page_views", epoch, day);
    let n: usize = con.zcard(&cells).unwrap();
    assert!(n > 0, "the slice exists");
    let _: () = con
        .del(&[keys.counters("page_views", epoch, day), cells])
        .unwrap();
    let stored: HashMap<String, i64> = con.hgetall(keys.offsets()).unwrap();

    // More events into the same slice.
    let more = events(63, 500, 1, t0 + 1, 10.0);
    kafka::produce(&producer, TOPIC, &records(&more, 0)).unwrap();
    let err = start(&rt, &cfg)
        .wait(&rt)
        .expect_err("a partial loss stops the layer");
    assert!(matches!(err, SpeedError::PartialLoss(_)), "{err}");
    // Nothing of the new events was applied.
    let after: HashMap<String, i64> = con.hgetall(keys.offsets()).unwrap();
    assert_eq!(after, stored);
}
