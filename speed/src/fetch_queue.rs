//! The fetched records of every assigned partition, read a batch at a time.
//!
//! rdkafka's `BaseConsumer::poll` hands out one record per call, and each call
//! reads the clock two or three times (librdkafka notes every poll for
//! `max.poll.interval.ms`; rdkafka-rs measures its timeout): 8% of the whole
//! process in a profile of the drain benchmark. librdkafka's batch call,
//! `rd_kafka_consume_batch_queue`, pays that once per batch, and takes the
//! queue lock once per batch instead of once per record.
//!
//! The batch call cannot read the consumer queue: it would serve a rebalance
//! found there with a forced unassign, bypassing the context that seeks each
//! partition to its offset in Redis. So each partition's fetch queue is
//! forwarded to a queue of our own, which only ever holds records (and
//! per-partition errors), while the consumer queue is still polled through
//! rdkafka for rebalances, errors and commit results. The forward must be set
//! before the partition is assigned (librdkafka keeps an application forward
//! when it starts fetching, and clears it when it stops): records that reached
//! the consumer queue first would otherwise be read out of order.
//!
//! rdkafka-rs wraps neither call for a shared queue (its
//! `split_partition_queue` gives one queue per partition, each read a record
//! at a time), hence this small unsafe layer. Its contract: the queue is
//! dropped before the consumer it came from, and a [`Batch`]'s records are
//! released when the batch is dropped.

use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// A queue of our own that assigned partitions forward their records to.
#[derive(Debug)]
pub struct FetchQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    batch: Vec<*mut rd::rd_kafka_message_t>,
}

// SAFETY: librdkafka queues are thread-safe; the pointers in `batch` are only
// touched by the thread that holds `&mut self`.
unsafe impl Send for FetchQueue {}

impl FetchQueue {
    /// A new, empty queue on `consumer`'s client, reading up to `batch` records
    /// per [`FetchQueue::poll`]. Drop it before the consumer.
    pub fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>, batch: usize) -> Option<Self> {
        // SAFETY: the client pointer is valid for the consumer's lifetime,
        // which by contract outlives this queue.
        let queue =
            NonNull::new(unsafe { rd::rd_kafka_queue_new(consumer.client().native_ptr()) })?;
        Some(FetchQueue {
            queue,
            batch: Vec::with_capacity(batch.max(1)),
        })
    }

    /// Up to the batch size of records. librdkafka returns early only with a
    /// full batch: with a `timeout` it waits that long for the batch to fill.
    pub fn poll(&mut self, timeout: Duration) -> Batch<'_> {
        let cap = self.batch.capacity();
        self.batch.clear();
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `batch` has room for `cap` pointers; librdkafka writes at
        // most that many and returns how many (or -1 on error).
        let n = unsafe {
            rd::rd_kafka_consume_batch_queue(self.queue.as_ptr(), ms, self.batch.as_mut_ptr(), cap)
        };
        // SAFETY: the first `n` slots were initialised by librdkafka.
        unsafe { self.batch.set_len(n.max(0) as usize) };
        Batch {
            messages: &mut self.batch,
        }
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_queue_new, destroyed once.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// Routes partitions to a [`FetchQueue`]; shared with the rebalance callback.
#[derive(Debug, Default)]
pub struct Router(AtomicPtr<rd::rd_kafka_queue_t>);

impl Router {
    /// Route to `queue` from now on. [`Router::clear`] before dropping it.
    pub fn point_at(&self, queue: &FetchQueue) {
        self.0.store(queue.queue.as_ptr(), Ordering::SeqCst);
    }

    /// Stop routing: call before the queue is dropped.
    pub fn clear(&self) {
        self.0.store(std::ptr::null_mut(), Ordering::SeqCst);
    }

    /// Forward `topic`/`partition`'s records to the queue. Call before the
    /// partition is assigned. Returns false (records then go to the consumer
    /// queue, which is also read) when there is no queue or librdkafka
    /// declines.
    pub fn route<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
    ) -> bool {
        let dst = self.0.load(Ordering::SeqCst);
        let Ok(name) = CString::new(topic) else {
            return false;
        };
        if dst.is_null() {
            return false;
        }
        // SAFETY: the client is alive (we are called with it); the partition
        // queue handle is released right after setting the forward, which
        // lives on in the partition.
        unsafe {
            let src = rd::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                name.as_ptr(),
                partition,
            );
            if src.is_null() {
                return false;
            }
            rd::rd_kafka_queue_forward(src, dst);
            rd::rd_kafka_queue_destroy(src);
        }
        true
    }
}

/// Records taken from the queue; released when dropped.
#[derive(Debug)]
pub struct Batch<'q> {
    messages: &'q mut Vec<*mut rd::rd_kafka_message_t>,
}

impl Batch<'_> {
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The records, in the order librdkafka delivered them (per partition,
    /// by offset).
    pub fn records(&self) -> impl Iterator<Item = Record<'_>> {
        self.messages.iter().map(|&m| Record {
            // SAFETY: non-null, valid until the batch is dropped.
            msg: unsafe { &*m },
        })
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for &m in self.messages.iter() {
            // SAFETY: each message was returned by the batch call and is
            // destroyed exactly once.
            unsafe { rd::rd_kafka_message_destroy(m) };
        }
        self.messages.clear();
    }
}

/// One record of a [`Batch`].
#[derive(Debug, Clone, Copy)]
pub struct Record<'b> {
    msg: &'b rd::rd_kafka_message_t,
}

impl<'b> Record<'b> {
    /// The record's topic handle, to compare cheaply before [`Record::topic`].
    pub fn topic_handle(&self) -> *const rd::rd_kafka_topic_t {
        self.msg.rkt
    }

    pub fn topic(&self) -> &'b str {
        if self.msg.rkt.is_null() {
            return "";
        }
        // SAFETY: librdkafka returns the topic's NUL-terminated name, alive
        // as long as the message holds its topic reference.
        unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.msg.rkt)) }
            .to_str()
            .unwrap_or("")
    }

    pub fn partition(&self) -> i32 {
        self.msg.partition
    }

    pub fn offset(&self) -> i64 {
        self.msg.offset
    }

    /// A per-partition error delivered in place of a record.
    pub fn error(&self) -> Option<KafkaError> {
        (self.msg.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| KafkaError::MessageConsumption(RDKafkaErrorCode::from(self.msg.err)))
    }

    pub fn payload(&self) -> &'b [u8] {
        bytes(self.msg.payload as *const u8, self.msg.len)
    }

    pub fn key(&self) -> Option<&'b [u8]> {
        (!self.msg.key.is_null()).then(|| bytes(self.msg.key as *const u8, self.msg.key_len))
    }

    /// The Kafka timestamp in epoch ms, if the record has one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        // SAFETY: a valid message; the type out-parameter may be null.
        let ts = unsafe { rd::rd_kafka_message_timestamp(self.msg, std::ptr::null_mut()) };
        (ts >= 0).then_some(ts)
    }
}

fn bytes<'b>(ptr: *const u8, len: usize) -> &'b [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: librdkafka's (pointer, length) of a live message.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}
