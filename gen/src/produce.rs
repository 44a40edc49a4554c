//! Paced production to Kafka. [`produce`] sends a generator's records at a
//! target rate (paced in small time slices, so the rate holds over any window
//! longer than a slice) until a duration passes, a count is reached or the
//! token is cancelled, then waits for every record to be acknowledged and
//! reports what was sent and what the broker refused. The observer sees each
//! record before it is sent, in order, so a test can fold exactly what was
//! produced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tally_core::config::KafkaConfig;
use tokio_util::sync::CancellationToken;

use crate::generator::{Generated, Generator};

/// What to produce, how fast and for how long.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    pub topic: String,
    /// Target events per second; 0 or less means as fast as possible.
    pub rate: f64,
    /// Stop after this long (with `count`, whichever comes first).
    pub duration: Option<Duration>,
    /// Stop after this many records.
    pub count: Option<u64>,
    /// Pacing slice: each slice sends what the rate owes so far.
    pub slice: Duration,
    /// Extra librdkafka producer settings (`linger.ms`, ...), applied last.
    pub settings: Vec<(String, String)>,
}

impl ProduceOptions {
    pub fn new(topic: &str, rate: f64) -> ProduceOptions {
        ProduceOptions {
            topic: topic.to_owned(),
            rate,
            duration: None,
            count: None,
            slice: Duration::from_millis(10),
            settings: Vec::new(),
        }
    }
}

/// What [`produce`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProduceReport {
    /// Records handed to the producer.
    pub sent: u64,
    /// Of those, valid events.
    pub valid: u64,
    /// Of those, malformed on purpose.
    pub malformed: u64,
    /// Acknowledged by the broker.
    pub delivered: u64,
    /// Refused by the broker or timed out.
    pub failed: u64,
    /// Payload bytes sent.
    pub bytes: u64,
    pub elapsed: Duration,
    /// The first delivery error, if any.
    pub first_error: Option<String>,
}

impl ProduceReport {
    /// Records per second over the run.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("create the Kafka producer for {brokers}: {source}")]
    Create { brokers: String, source: KafkaError },
    #[error("send to topic `{topic}`: {source}")]
    Send { topic: String, source: KafkaError },
    #[error("flush the producer: {0}")]
    Flush(KafkaError),
    #[error("the flush task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Counts delivery reports (called on librdkafka's polling thread).
#[derive(Debug, Default)]
struct Counting {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Produce `generator`'s records to Kafka as `options` say, showing each to
/// `observer` first. Kafka timestamps are the wall clock at each slice.
/// Returns once every sent record is acknowledged or failed (or after a
/// 60 s flush timeout, an error).
pub async fn produce(
    kafka: &KafkaConfig,
    generator: &mut Generator,
    options: &ProduceOptions,
    mut observer: Option<&mut (dyn FnMut(&Generated) + Send)>,
    cancel: &CancellationToken,
) -> Result<ProduceReport, ProduceError> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", "none")
        .set("enable.idempotence", "false")
        .set("message.max.bytes", "4000000");
    for (k, v) in &options.settings {
        cfg.set(k, v);
    }
    let producer: Arc<ThreadedProducer<Counting>> = Arc::new(
        cfg.create_with_context(Counting::default())
            .map_err(|source| ProduceError::Create {
                brokers: kafka.brokers.clone(),
                source,
            })?,
    );
    let mut report = ProduceReport::default();
    let start = Instant::now();
    let limit = options.count.unwrap_or(u64::MAX);
    let slice = options.slice.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(slice);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'run: while report.sent < limit && !cancel.is_cancelled() {
        let elapsed = start.elapsed();
        if options.duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        let owed = if options.rate > 0.0 {
            ((options.rate * elapsed.as_secs_f64()).ceil() as u64).min(limit)
        } else {
            // Unpaced: a large slice at a time.
            report.sent.saturating_add(10_000).min(limit)
        };
        let now = wall_ms();
        while report.sent < owed {
            let g = generator.next(now);
            if let Some(obs) = observer.as_mut() {
                obs(&g);
            }
            send(&producer, &options.topic, &g, cancel).await?;
            report.sent += 1;
            report.bytes += g.payload.len() as u64;
            if g.valid {
                report.valid += 1;
            } else {
                report.malformed += 1;
            }
            if cancel.is_cancelled() {
                break 'run;
            }
        }
        if options.rate > 0.0 {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => break,
            }
        } else {
            tokio::task::yield_now().await;
        }
    }
    let flusher = producer.clone();
    tokio::task::spawn_blocking(move || flusher.flush(Duration::from_secs(60)))
        .await?
        .map_err(ProduceError::Flush)?;
    report.elapsed = start.elapsed();
    let ctx = producer.context();
    report.delivered = ctx.delivered.load(Ordering::Relaxed);
    report.failed = ctx.failed.load(Ordering::Relaxed);
    report.first_error = ctx.first_error.lock().ok().and_then(|e| e.clone());
    Ok(report)
}

/// Send one record, waiting (asynchronously) while the local queue is full.
async fn send(
    producer: &ThreadedProducer<Counting>,
    topic: &str,
    g: &Generated,
    cancel: &CancellationToken,
) -> Result<(), ProduceError> {
    let mut record = BaseRecord::to(topic)
        .key(g.key.as_slice())
        .payload(g.payload.as_slice())
        .timestamp(g.kafka_ts_ms);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if !cancel.is_cancelled() =>
            {
                record = back;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((source, _)) => {
                return Err(ProduceError::Send {
                    topic: topic.to_owned(),
                    source,
                })
            }
        }
    }
}
