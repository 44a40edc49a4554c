//! A Redis that may evict keys, for real: `redis-server` started with
//! `maxmemory-policy allkeys-lru`, and one that refuses `CONFIG`. The speed
//! layer must refuse to start (nothing written, an error naming the setting
//! that accepts the risk) unless the config accepts exactly that, and then
//! count exactly the plain fold.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tally_core::config::Config;
use tally_speed::SpeedError;
use tally_testkit::{kafka, runtime, Broker, Redis};

/// Run the speed layer expecting it to refuse to start.
fn refused(rt: &tokio::runtime::Runtime, cfg: &Config) -> SpeedError {
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let run = tally_speed::run(
        Arc::new(cfg.clone()),
        store,
        tokio_util::sync::CancellationToken::new(),
    );
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), run).await }) {
        Ok(Err(e)) => e,
        Ok(Ok(summary)) => panic!("started: {summary:?}"),
        Err(_) => panic!("started (still running after 30 s)"),
    }
}

fn keys_in(redis_url: &str) -> i64 {
    let mut con = redis::Client::open(redis_url)
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("DBSIZE").query(&mut con).unwrap()
}

/// Before, the speed layer ran on any policy: an evicted offset re-counted
/// what its counters still held, an evicted counter was lost silently. Now
/// it refuses `allkeys-lru` (and accepting another policy does not accept
/// this one) until `redis.accept_maxmemory_policy = "allkeys-lru"`.
#[test]
fn a_redis_that_evicts_keys_is_refused_unless_the_config_accepts_its_policy() {
    let broker = Broker::start().unwrap();
    let redis =
        Redis::start_with(&["--maxmemory", "512mb", "--maxmemory-policy", "allkeys-lru"]).unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 2).unwrap();
    let evs = events(51, 1_000, 2, base_ms(), 10.0);
    let recs = records(&evs, 0);
    let producer = kafka::producer(&broker.bootstrap(), 100).unwrap();
    kafka::produce(&producer, TOPIC, &recs).unwrap();
    let rt = runtime();

    let mut cfg = config(&broker.bootstrap(), &redis.url(), "evict");
    for accepted in [None, Some("volatile-ttl")] {
        cfg.redis.accept_maxmemory_policy = accepted.map(str::to_owned);
        let e = refused(&rt, &cfg);
        assert!(
            matches!(&e, SpeedError::Evicting { policy } if policy == "allkeys-lru"),
            "{accepted:?}: {e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("redis.accept_maxmemory_policy = \"allkeys-lru\"")
                && msg.contains("noeviction"),
            "{msg}"
        );
        assert_eq!(keys_in(&redis.url()), 0, "{accepted:?}: nothing written");
    }

    cfg.redis.accept_maxmemory_policy = Some("allkeys-lru".into());
    let speed = start(&rt, &cfg);
    wait_caught_up(&redis.url(), &ends(&recs, 2), Duration::from_secs(60));
    speed.stop(&rt);
    assert_exact(&redis.url(), &evs);
}

/// A server that refuses `CONFIG GET` (managed Redis, or a user without
/// the right): the policy is unknown, so the speed layer refuses, naming
/// `"any"`; with it, it runs.
#[test]
fn a_policy_that_cannot_be_read_is_refused_unless_the_config_skips_the_check() {
    let broker = Broker::start().unwrap();
    let redis = Redis::start_with(&["--rename-command", "CONFIG", ""]).unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 1).unwrap();
    let evs = events(52, 300, 1, base_ms(), 10.0);
    let recs = records(&evs, 0);
    let producer = kafka::producer(&broker.bootstrap(), 100).unwrap();
    kafka::produce(&producer, TOPIC, &recs).unwrap();
    let rt = runtime();

    let mut cfg = config(&broker.bootstrap(), &redis.url(), "evict-any");
    let e = refused(&rt, &cfg);
    assert!(matches!(e, SpeedError::PolicyUnknown(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("redis.accept_maxmemory_policy = \"any\""),
        "{e}"
    );
    assert_eq!(keys_in(&redis.url()), 0, "nothing written");

    cfg.redis.accept_maxmemory_policy = Some("any".into());
    let speed = start(&rt, &cfg);
    wait_caught_up(&redis.url(), &ends(&recs, 1), Duration::from_secs(60));
    speed.stop(&rt);
    assert_exact(&redis.url(), &evs);
}
