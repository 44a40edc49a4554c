//! `produce` against a real broker (a private Tansu): what the observer saw
//! is exactly what the topic holds, the rate is held, and cancellation stops
//! it promptly.

use std::time::{Duration, Instant};

use tally_core::config::KafkaConfig;
use tally_gen::{produce, Generated, Generator, ProduceOptions, Shape};
use tally_testkit::{kafka, runtime, Broker};
use tokio_util::sync::CancellationToken;

fn kafka_config(broker: &Broker) -> KafkaConfig {
    KafkaConfig {
        brokers: broker.bootstrap(),
        ..KafkaConfig::default()
    }
}

#[test]
fn what_is_observed_is_what_is_produced_at_the_rate() {
    let broker = Broker::start().unwrap();
    kafka::create_topic(&broker.bootstrap(), "events", 2).unwrap();
    let shape = Shape {
        malformed_share: 0.02,
        ..Shape::default()
    };
    let mut gen = Generator::new(shape, 3).unwrap();
    let mut options = ProduceOptions::new("events", 10_000.0);
    options.count = Some(15_000);
    let mut seen: Vec<Generated> = Vec::new();
    let mut observe = |g: &Generated| seen.push(g.clone());
    let start = Instant::now();
    let report = runtime()
        .block_on(produce(
            &kafka_config(&broker),
            &mut gen,
            &options,
            Some(&mut observe),
            &CancellationToken::new(),
        ))
        .unwrap();
    let took = start.elapsed();
    assert_eq!(report.sent, 15_000);
    assert_eq!(report.delivered, 15_000, "{report:?}");
    assert_eq!(report.failed, 0);
    assert_eq!(report.valid + report.malformed, 15_000);
    assert!(report.malformed > 100);
    // 15,000 at 10,000/s: about 1.5 s, never much faster.
    assert!(took >= Duration::from_millis(1_400), "{took:?}");
    let mut want: Vec<Vec<u8>> = seen.iter().map(|g| g.payload.clone()).collect();
    let mut got: Vec<Vec<u8>> = kafka::read_n(&broker.bootstrap(), "events", 2, 15_000)
        .unwrap()
        .into_iter()
        .map(|c| c.payload)
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "produced records differ from the observed ones"
    );
}

#[test]
fn cancellation_stops_it() {
    let broker = Broker::start().unwrap();
    kafka::create_topic(&broker.bootstrap(), "events", 1).unwrap();
    let mut gen = Generator::new(Shape::default(), 4).unwrap();
    let options = ProduceOptions::new("events", 1_000.0);
    let token = CancellationToken::new();
    let t = token.clone();
    let report = runtime()
        .block_on(async {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                t.cancel();
            });
            produce(&kafka_config(&broker), &mut gen, &options, None, &token).await
        })
        .unwrap();
    assert!((300..=800).contains(&report.sent), "{report:?}");
    assert_eq!(report.delivered, report.sent);
}
