//! Kafka helpers for tests: create topics, produce records fast, read a topic back.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::process::Error;

/// One record to produce.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub payload: Vec<u8>,
    /// CreateTime, epoch ms.
    pub timestamp_ms: i64,
}

/// A record read back, with its headers.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

fn kafka_err(e: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

/// Create `topic` with `partitions` partitions.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(kafka_err)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let res = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .map_err(kafka_err)?;
    for r in res {
        r.map_err(|(t, e)| kafka_err(format!("create topic {t}: {e}")))?;
    }
    Ok(())
}

/// A producer tuned for throughput, with the batch size the tests need to
/// provoke mid-batch seeks (`batch.num.messages`).
pub fn producer(bootstrap: &str, batch_records: usize) -> Result<BaseProducer, Error> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", batch_records.to_string())
        .set("batch.size", "4000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", "none")
        .set("enable.idempotence", "false")
        .create()
        .map_err(kafka_err)
}

/// Produce every record and wait until all are acknowledged.
pub fn produce(producer: &BaseProducer, topic: &str, records: &[Record]) -> Result<(), Error> {
    for r in records {
        let mut rec: BaseRecord<'_, (), [u8]> = BaseRecord::to(topic)
            .partition(r.partition)
            .payload(r.payload.as_slice())
            .timestamp(r.timestamp_ms);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, back)) => {
                    if !matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ) {
                        return Err(kafka_err(e));
                    }
                    producer.poll(Duration::from_millis(10));
                    rec = back;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).map_err(kafka_err)
}

/// Produce `records` in `slices` with `pause` after each, from a producer
/// with batches of 1,000 records (so that resumes land mid-batch): traffic
/// that keeps arriving through a group's rebalances. Blocking.
pub fn produce_paced(
    bootstrap: &str,
    topic: &str,
    records: &[Record],
    slices: usize,
    pause: Duration,
) -> Result<(), Error> {
    let producer = producer(bootstrap, 1000)?;
    let size = records.len().div_ceil(slices.max(1)).max(1);
    for slice in records.chunks(size) {
        produce(&producer, topic, slice)?;
        std::thread::sleep(pause);
    }
    Ok(())
}

/// The end offset of every partition of `topic`.
pub fn high_watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Result<Vec<i64>, Error> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(kafka_err)?;
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, h)| h)
                .map_err(kafka_err)
        })
        .collect()
}

/// Read every record of `topic` (all partitions) from the start, up to the
/// end offsets observed first. (Tansu 0.6 reports the last record batch's
/// base offset plus one as the end: use [`read_n`] when the count is known.)
pub fn read_all(bootstrap: &str, topic: &str, partitions: i32) -> Result<Vec<Consumed>, Error> {
    let ends = high_watermarks(bootstrap, topic, partitions)?;
    read_until(bootstrap, topic, partitions, |pos, _| {
        pos.iter().zip(&ends).all(|(p, e)| p >= e)
    })
}

/// Read the first `n` records of `topic` (all partitions), waiting up to
/// 120 s for them.
pub fn read_n(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    n: usize,
) -> Result<Vec<Consumed>, Error> {
    read_until(bootstrap, topic, partitions, |_, got| got >= n)
}

/// Read from the start until `done(next offsets, records read)` or 120 s.
fn read_until(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    done: impl Fn(&[i64], usize) -> bool,
) -> Result<Vec<Consumed>, Error> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("read-all-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .map_err(kafka_err)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(kafka_err)?;
    }
    c.assign(&tpl).map_err(kafka_err)?;
    let mut pos = vec![0i64; partitions as usize];
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !done(&pos, out.len()) && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let p = m.partition() as usize;
            if m.offset() < pos[p] {
                continue;
            }
            pos[p] = m.offset() + 1;
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_string(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Consumed {
                partition: m.partition(),
                offset: m.offset(),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    Ok(out)
}
