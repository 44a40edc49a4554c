//! The peer for the speed benchmark: a bare librdkafka consumer that reads a
//! topic and discards every record, with the same client settings as the
//! speed layer. It is the limit of this machine for consuming that topic.
//!
//! Usage: bare_consume BOOTSTRAP TOPIC PARTITIONS RECORDS

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tally_core::config::KafkaConfig;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, bootstrap, topic, partitions, records] = &args[..] else {
        eprintln!("usage: bare_consume BOOTSTRAP TOPIC PARTITIONS RECORDS");
        std::process::exit(2);
    };
    let partitions: i32 = partitions.parse().expect("partitions");
    let records: u64 = records.parse().expect("records");
    let k = KafkaConfig {
        brokers: bootstrap.clone(),
        ..KafkaConfig::default()
    };
    let c: BaseConsumer = tally_kafka::consumer_config(&k, "bare-consume", None)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let start = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0usize;
    while n < records {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            bytes += m.payload().map_or(0, <[u8]>::len);
            n += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{n} {secs} {bytes}");
}
