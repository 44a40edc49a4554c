//! A consumer that reads its partitions' records a batch at a time.
//!
//! rdkafka's `BaseConsumer::poll` hands out one record per call, and each call
//! reads the clock two or three times (librdkafka notes every poll for
//! `max.poll.interval.ms`; rdkafka measures its timeout): 8% of the whole
//! speed layer in a profile of the drain benchmark. librdkafka's batch call,
//! `rd_kafka_consume_batch_queue`, pays that once per batch, and takes the
//! queue lock once per batch instead of once per record.
//!
//! The batch call cannot read the consumer queue: it would serve a rebalance
//! found there with a forced unassign, bypassing the context that decides
//! where each partition starts. So each partition is forwarded to a queue of
//! our own as it is assigned (by the rebalance callback, see
//! [`crate::rebalance`]), which only ever holds records and per-partition
//! errors, while the consumer queue is still polled through rdkafka
//! ([`Reader::consumer`]) for rebalances, errors, commit results and any
//! record that arrived there before its partition was forwarded.
//!
//! The [`Reader`] owns both the consumer and the queue, and destroys the
//! queue first (librdkafka requires it); the records of a poll borrow the
//! reader, so none outlives its batch, the queue or the consumer.

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};

use crate::fetch_queue::Queue;
pub use crate::fetch_queue::{Iter, Record, Records};
use crate::rebalance::{Context, Layer};

/// A consumer with a fetch queue of its own (see the module doc).
pub struct Reader<L: Layer> {
    consumer: BaseConsumer<Context<L>>,
    /// Dropped by hand in `Drop`, before the consumer.
    queue: ManuallyDrop<Arc<Queue>>,
    /// The batch buffer: its capacity is the batch size.
    messages: Vec<*mut rd::rd_kafka_message_t>,
}

impl<L: Layer> std::fmt::Debug for Reader<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("batch", &self.messages.capacity())
            .finish_non_exhaustive()
    }
}

impl<L: Layer> Reader<L> {
    /// A consumer configured by `config`, whose partitions start where
    /// `layer` says, reading up to `batch` records per [`Reader::poll`].
    pub fn new(config: &ClientConfig, layer: L, batch: usize) -> KafkaResult<Self> {
        let consumer: BaseConsumer<Context<L>> = config.create_with_context(Context::new(layer))?;
        // SAFETY: the client is alive; the queue is dropped before it, in
        // `Drop` (and right here if routing cannot start).
        let queue = unsafe { Queue::new(consumer.client().native_ptr()) }
            .map(Arc::new)
            .ok_or_else(|| {
                KafkaError::ClientCreation("librdkafka could not create a queue".into())
            })?;
        // SAFETY: `Drop` clears the router before the consumer goes.
        unsafe { consumer.context().router.point_at(queue.clone()) };
        Ok(Reader {
            consumer,
            queue: ManuallyDrop::new(queue),
            messages: Vec::with_capacity(batch.max(1)),
        })
    }

    /// The consumer: poll it too (`poll(Duration::ZERO)`), for rebalances,
    /// errors and records that arrived before their partition was forwarded.
    pub fn consumer(&self) -> &BaseConsumer<Context<L>> {
        &self.consumer
    }

    /// Up to the batch size of records from the assigned partitions.
    /// librdkafka returns early only with a full batch: with a `timeout` it
    /// waits that long for the batch to fill.
    pub fn poll(&mut self, timeout: Duration) -> Records<'_> {
        Records::take(&self.queue, &mut self.messages, timeout)
    }
}

impl<L: Layer> Drop for Reader<L> {
    fn drop(&mut self) {
        // A rebalance served while the consumer closes must not route to a
        // queue that is gone; then the queue goes, then (after this body) the
        // consumer.
        self.consumer.context().router.clear();
        // SAFETY: not used again; the field is never read after this.
        unsafe { ManuallyDrop::drop(&mut self.queue) };
    }
}
