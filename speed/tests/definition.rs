//! A view whose definition changes while Redis holds its slices: the speed
//! layer rebuilds from the snapshot cut instead of adding new-definition
//! deltas to old-definition counters, and a writer still running the old
//! definition is refused; the serving role's alert keys under the same
//! prefix stay. Real Tansu and Redis, against the plain fold under each
//! definition.

mod common;

use std::time::Duration;

use common::*;
use tally_core::event::{decode, Limits};
use tally_speed::apply::Applier;
use tally_speed::delta::{At, Chunk, Folder, Range, Unflushed};
use tally_speed::SpeedError;
use tally_testkit::{kafka, runtime, Broker, Redis};

#[test]
fn a_changed_view_definition_rebuilds_from_the_cut() {
    let broker = Broker::start().unwrap();
    let redis = Redis::start().unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 2).unwrap();
    let t0 = base_ms();
    let first = events(71, 2_000, 2, t0, 10.0);
    let producer = kafka::producer(&broker.bootstrap(), 100).unwrap();
    kafka::produce(&producer, TOPIC, &records(&first, 0)).unwrap();
    let rt = runtime();
    let old = config(&broker.bootstrap(), &redis.url(), "def1");
    let speed = start(&rt, &old);
    wait_caught_up(
        &redis.url(),
        &ends(&records(&first, 0), 2),
        Duration::from_secs(60),
    );
    speed.stop(&rt);
    assert_exact_with(&redis.url(), &old, &first);
    // The serving role's alert state lives under the same prefix.
    let mut con = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .unwrap();
    let alert_state = old.redis.layout().alerts().state();
    let _: () = redis::cmd("HSET")
        .arg(&alert_state)
        .arg("rule")
        .arg("{}")
        .query(&mut con)
        .unwrap();

    // `page_views` now counts clicks too; more events arrive.
    let mut new = old.clone();
    let pv = new
        .views
        .iter_mut()
        .find(|v| v.name == "page_views")
        .unwrap();
    pv.filter.insert(
        "event_type".into(),
        vec!["page_view".into(), "click".into()],
    );
    assert_ne!(
        pv.fingerprint(),
        old.view("page_views").unwrap().fingerprint()
    );
    let second = events(72, 1_000, 2, t0 + 30_000, 10.0);
    kafka::produce(&producer, TOPIC, &records(&second, 0)).unwrap();
    let all: Vec<Ev> = first.iter().chain(&second).cloned().collect();

    // Restarted with the new definition: rebuilt from the cut (no snapshot:
    // from the start of the log), equal to the fold of every event under
    // the new definition (before, new deltas were added to old counters).
    let speed = start(&rt, &new);
    wait_caught_up(
        &redis.url(),
        &ends(&records(&all, 0), 2),
        Duration::from_secs(60),
    );
    speed.stop(&rt);
    assert_exact_with(&redis.url(), &new, &all);
    let kept: Option<String> = redis::cmd("HGET")
        .arg(&alert_state)
        .arg("rule")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        kept.as_deref(),
        Some("{}"),
        "the rebuild keeps the alert keys"
    );

    // A writer still on the old definition (a second speed layer that was
    // not restarted) is refused, nothing applied.
    let mut applier = rt.block_on(Applier::connect(&old)).unwrap();
    let mut folder = Folder::new(old.views.clone(), old.epochs.grid());
    let e = &first[0];
    let mut delta = Unflushed::default();
    let event = decode(&e.g.payload, e.g.kafka_ts_ms, &Limits::default()).unwrap();
    let at = At {
        topic: TOPIC,
        partition: e.partition,
        offset: 0,
        kafka_ts_ms: e.g.kafka_ts_ms,
    };
    folder.fold(&mut delta, 0, at, &event);
    let (slices, events) = delta.take();
    let stored = rt
        .block_on(applier.stored_offset(TOPIC, e.partition))
        .unwrap()
        .expect("a stored offset");
    let chunk = Chunk {
        generation: 1,
        ranges: vec![Range {
            topic: TOPIC.into(),
            partition: e.partition,
            start: stored,
            end: stored + 1,
            fresh: false,
        }],
        slices,
        events,
    };
    let err = rt
        .block_on(applier.apply(&chunk, &folder, t0))
        .expect_err("refused");
    assert!(matches!(err, SpeedError::OtherDefinition(_)), "{err}");
    assert_exact_with(&redis.url(), &new, &all);
}

/// `redis.partition_groups` changed while Redis holds counters: partitions
/// move to other groups, and the old groups' counters would be read beside
/// the ones rebuilt in the new groups (partition 2 moves from group 0 of 2
/// to group 2 of 4: counted twice). The layout is part of the recorded
/// fingerprint, so the speed layer rebuilds everything from the cut instead.
#[test]
fn a_changed_number_of_partition_groups_rebuilds_from_the_cut() {
    let broker = Broker::start().unwrap();
    let redis = Redis::start().unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 4).unwrap();
    let t0 = base_ms();
    let first = events(81, 2_000, 4, t0, 10.0);
    let producer = kafka::producer(&broker.bootstrap(), 100).unwrap();
    kafka::produce(&producer, TOPIC, &records(&first, 0)).unwrap();
    let mut con = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .unwrap();
    let rt = runtime();
    let mut two = config(&broker.bootstrap(), &redis.url(), "groups2");
    two.redis.partition_groups = Some(2);
    let speed = start(&rt, &two);
    wait_caught_up_in(
        &mut con,
        &two.redis.layout(),
        &ends(&records(&first, 0), 4),
        Duration::from_secs(60),
    );
    speed.stop(&rt);
    assert_exact_in(&mut con, &two.redis.layout(), &two, &first);

    let second = events(82, 1_000, 4, t0 + 30_000, 10.0);
    kafka::produce(&producer, TOPIC, &records(&second, 0)).unwrap();
    let all: Vec<Ev> = first.iter().chain(&second).cloned().collect();
    let mut four = two.clone();
    four.redis.partition_groups = Some(4);
    let speed = start(&rt, &four);
    wait_caught_up_in(
        &mut con,
        &four.redis.layout(),
        &ends(&records(&all, 0), 4),
        Duration::from_secs(60),
    );
    speed.stop(&rt);
    assert_exact_in(&mut con, &four.redis.layout(), &four, &all);
}
