//! The speed layer over secured transports: a broker reached only over TLS,
//! and a Redis that speaks only TLS and admits only an ACL user with a
//! password. The counters must equal the plain fold, as over plain TCP, and
//! the secured servers must really refuse what they should (a client
//! without the password, a plaintext client, keys outside the prefix), so
//! that the test cannot pass by silently falling back to an open server.

mod common;

use std::time::Duration;

use common::*;
use tally_core::kafka_security::{KafkaSecurity, Protocol};
use tally_testkit::tls::{self, TlsFiles};
use tally_testkit::{kafka, runtime, Broker, Redis};

/// Least privilege for the speed layer: its own keys (`t:`; `test:` is the
/// truth's scratch key for Redis's own PFCOUNT), no admin commands.
const ACL: &str = "~t:* ~test:* +@all -@dangerous +info +config|get";

#[test]
fn events_over_tls_kafka_into_tls_redis_as_an_acl_user_are_exact() {
    tls::install_crypto_provider();
    let tls = TlsFiles::generate().unwrap();
    // Both Redis (rustls) and the test's own clients find the private CA
    // through SSL_CERT_FILE, as an operator's would; Kafka's comes from the
    // config. Set before any TLS client exists in this test binary.
    std::env::set_var("SSL_CERT_FILE", &tls.ca);
    let broker = Broker::start_tls(&tls).unwrap();
    let redis = Redis::start_secure(&tls, "tally", "pw-0f3a9", ACL).unwrap();

    let mut cfg = config(&broker.bootstrap(), &redis.url(), "tls");
    cfg.kafka.security = KafkaSecurity {
        protocol: Protocol::Ssl,
        ca_file: Some(tls.ca.display().to_string()),
        ..KafkaSecurity::default()
    };
    cfg.validate().unwrap();
    let client = || tally_kafka::client_config(&cfg.kafka);
    kafka::create_topic_with(client(), TOPIC, 2).unwrap();
    kafka::create_topic_with(client(), "dead", 1).unwrap();

    let evs = events(11, 20_000, 2, base_ms(), 10.0);
    let recs = records(&evs, 0);
    let producer = kafka::producer_with(client(), 500).unwrap();
    kafka::produce(&producer, TOPIC, &recs).unwrap();

    let rt = runtime();
    let speed = start(&rt, &cfg);
    wait_caught_up(&redis.url(), &ends(&recs, 2), Duration::from_secs(120));
    speed.stop(&rt);
    assert_exact(&redis.url(), &evs);
}

#[test]
fn the_secured_servers_refuse_clients_without_credentials_or_tls() {
    tls::install_crypto_provider();
    let tls = TlsFiles::generate().unwrap();
    std::env::set_var("SSL_CERT_FILE", &tls.ca);
    let redis = Redis::start_secure(&tls, "tally", "pw-0f3a9", ACL).unwrap();
    let port = redis
        .url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();

    let ping = |url: &str| -> Result<String, redis::RedisError> {
        let mut con = redis::Client::open(url)?.get_connection()?;
        redis::cmd("PING").query(&mut con)
    };
    assert_eq!(ping(&redis.url()).unwrap(), "PONG");
    // The `default` user is off: no password, no entry.
    let anonymous = ping(&format!("rediss://127.0.0.1:{port}"));
    assert!(
        anonymous.is_err(),
        "anonymous client admitted: {anonymous:?}"
    );
    let wrong = ping(&format!("rediss://tally:nope@127.0.0.1:{port}"));
    assert!(wrong.is_err(), "wrong password admitted");
    // TLS only: the plain protocol gets nowhere.
    let plain = ping(&format!("redis://tally:pw-0f3a9@127.0.0.1:{port}"));
    assert!(plain.is_err(), "plaintext client admitted");
    // The ACL holds the speed layer to its own keys.
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let foreign: Result<(), _> = redis::cmd("SET").arg("other:k").arg(1).query(&mut con);
    assert!(foreign.is_err(), "a key outside the prefix was writable");
    let flush: Result<(), _> = redis::cmd("FLUSHALL").query(&mut con);
    assert!(flush.is_err(), "FLUSHALL was allowed");
}
