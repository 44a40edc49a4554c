//! Rejected records go to the dead-letter topic, best effort.
//!
//! The record keeps its key and payload; headers say why and where it came
//! from: `tally.reason` (a stable code from `tally_core::event::Reject::code`),
//! `tally.error` (the human message), `tally.source.topic`,
//! `tally.source.partition`, `tally.source.offset`.
//!
//! What is guaranteed, and what is not:
//!
//! - Sending blocks while the producer's local queue is full: consumption
//!   pauses until the broker takes dead letters again (backpressure, as for
//!   Redis). It does not block on delivery.
//! - A rejected record's offset is covered by the next chunk whatever becomes
//!   of its dead letter, so a failed dead letter is not retried. One that
//!   the producer refuses outright (not a full queue), cannot deliver within
//!   `message.timeout.ms` (5 minutes), or still holds 10 s into shutdown is
//!   lost: the first two are logged and counted
//!   (`tally_speed_dead_letter_failures_total`), the last is logged.
//! - A record replayed after a crash may be dead-lettered twice.
//! - `tally_speed_dead_letters_total` counts rejected records by reason,
//!   delivered or not.

use std::time::Duration;

use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tracing::warn;

use tally_core::config::KafkaConfig;
use tally_core::event::Reject;

use crate::error::SpeedError;

/// Producer for the dead-letter topic.
pub(crate) struct DeadLetters {
    producer: ThreadedProducer<Deliveries>,
    topic: String,
}

/// Hears of dead letters that could not be delivered.
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, msg)) = result {
            warn!(error = %e, partition = msg.partition(), "a dead letter was not delivered");
            metrics::counter!("tally_speed_dead_letter_failures_total").increment(1);
        }
    }
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .finish()
    }
}

/// Where a rejected record came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl DeadLetters {
    pub(crate) fn new(kafka: &KafkaConfig) -> Result<Self, SpeedError> {
        let producer: ThreadedProducer<Deliveries> = tally_kafka::client_config(kafka)
            .set("linger.ms", "20")
            .set("message.timeout.ms", "300000")
            .create_with_context(Deliveries)?;
        Ok(DeadLetters {
            producer,
            topic: kafka.dead_letter_topic.clone(),
        })
    }

    /// Queue one rejected record. Waits (polling) while the local queue is full.
    pub(crate) fn send(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        reject: &Reject,
        src: Source<'_>,
    ) {
        let message = reject.to_string();
        let partition = src.partition.to_string();
        let offset = src.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "tally.reason",
                value: Some(reject.code()),
            })
            .insert(Header {
                key: "tally.error",
                value: Some(message.as_str()),
            })
            .insert(Header {
                key: "tally.source.topic",
                value: Some(src.topic),
            })
            .insert(Header {
                key: "tally.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "tally.source.offset",
                value: Some(offset.as_str()),
            });
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic)
            .payload(payload)
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    if matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ) {
                        std::thread::sleep(Duration::from_millis(5));
                        record = r;
                    } else {
                        warn!(error = %e, "dead-letter produce failed");
                        metrics::counter!("tally_speed_dead_letter_failures_total").increment(1);
                        break;
                    }
                }
            }
        }
        metrics::counter!("tally_speed_dead_letters_total", "reason" => reject.code()).increment(1);
    }

    /// Wait for queued dead letters to be delivered.
    pub(crate) fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            warn!(error = %e, "dead letters not all delivered before shutdown");
        }
    }
}
