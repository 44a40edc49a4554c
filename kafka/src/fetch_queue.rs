//! The unsafe layer under [`crate::Reader`]: a librdkafka queue of our own
//! that assigned partitions forward their records to, read a batch at a time.
//!
//! rdkafka wraps neither the batch call nor a shared forward queue (its
//! `split_partition_queue` gives one queue per partition, each read a record
//! at a time), hence these few calls into librdkafka. Their contracts:
//!
//! - A [`Queue`] is destroyed before the client it was made from (every
//!   handle to it: the reader's and the [`Router`]'s). [`Queue::new`] and
//!   [`Router::point_at`] are `unsafe` for that reason; [`crate::Reader`]
//!   owns the client and the queue, and its `Drop` keeps the order.
//! - Each message the batch call returns is destroyed exactly once, after
//!   the last borrow of it: [`Records`] owns them, its records borrow it, and
//!   its `Drop` destroys them. A [`Records`] borrows the reader mutably, so
//!   it cannot outlive the queue or the client either.
//!
//! This module is private to the crate; nothing here is reachable except
//! through the reader's safe methods and the [`Records`] and [`Record`] they
//! hand out.

use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// A queue created on a client with `rd_kafka_queue_new`; destroyed on drop.
#[derive(Debug)]
pub(crate) struct Queue(NonNull<rd::rd_kafka_queue_t>);

// SAFETY: librdkafka queues are thread-safe (every operation takes the
// queue's lock), and the handle is only destroyed once, by `Drop`.
unsafe impl Send for Queue {}
// SAFETY: as above; `&Queue` only hands the pointer to librdkafka calls.
unsafe impl Sync for Queue {}

impl Queue {
    /// A new, empty queue on `client`. `None` if librdkafka declines.
    ///
    /// # Safety
    ///
    /// `client` is a live client handle, and the queue (with every `Arc` of
    /// it) is dropped before that client is closed or destroyed.
    pub(crate) unsafe fn new(client: *mut rd::rd_kafka_t) -> Option<Self> {
        // SAFETY: a live client, by this function's contract.
        NonNull::new(unsafe { rd::rd_kafka_queue_new(client) }).map(Queue)
    }

    /// Take up to `out.capacity()` messages into `out` (cleared first),
    /// waiting up to `timeout` for that many: librdkafka returns early only
    /// with a full batch. The caller then owns the messages: see [`Records`].
    fn consume_batch(&self, timeout: Duration, out: &mut Vec<*mut rd::rd_kafka_message_t>) {
        let cap = out.capacity();
        out.clear();
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `out` has room for `cap` pointers; librdkafka writes at
        // most that many and returns how many (or -1 on error).
        let n =
            unsafe { rd::rd_kafka_consume_batch_queue(self.0.as_ptr(), ms, out.as_mut_ptr(), cap) };
        // SAFETY: the first `n` slots were initialised by librdkafka.
        unsafe { out.set_len(n.max(0) as usize) };
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_queue_new, destroyed once, before its
        // client (`Queue::new`'s contract).
        unsafe { rd::rd_kafka_queue_destroy(self.0.as_ptr()) };
    }
}

/// The queue that newly assigned partitions are forwarded to, if any;
/// shared with the rebalance callback (it lives in the consumer's context).
#[derive(Debug, Default)]
pub(crate) struct Router(Mutex<Option<Arc<Queue>>>);

impl Router {
    /// Forward partitions routed from now on to `queue`.
    ///
    /// # Safety
    ///
    /// [`Router::clear`] is called before the client that `queue` was made
    /// from is closed or destroyed: the router holds a handle to the queue.
    pub(crate) unsafe fn point_at(&self, queue: Arc<Queue>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(queue);
    }

    /// Stop routing and let go of the queue.
    pub(crate) fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Forward `topic`/`partition`'s records to the queue. Call before the
    /// partition is assigned: librdkafka keeps an application forward when it
    /// starts fetching (and clears it when it stops), and records that
    /// reached the consumer queue first would be read out of order. Returns
    /// false (the records then go to the consumer queue, which the reader's
    /// owner also polls) when there is no queue or librdkafka declines.
    pub(crate) fn route<C: ConsumerContext + 'static>(
        &self,
        consumer: &impl Consumer<C>,
        topic: &str,
        partition: i32,
    ) -> bool {
        let queue = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(dst), Ok(name)) = (queue.as_ref(), CString::new(topic)) else {
            return false;
        };
        // SAFETY: the client is alive (borrowed through `consumer`) and so is
        // the queue (held under the lock). The partition queue handle is
        // released right after setting the forward, which lives on in the
        // partition.
        unsafe {
            let src = rd::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                name.as_ptr(),
                partition,
            );
            if src.is_null() {
                return false;
            }
            rd::rd_kafka_queue_forward(src, dst.0.as_ptr());
            rd::rd_kafka_queue_destroy(src);
        }
        true
    }
}

/// Records taken from the queue in one batch call; released when dropped.
#[derive(Debug)]
pub struct Records<'q> {
    /// Each pointer was returned by the batch call and is destroyed once, in
    /// `Drop`.
    messages: &'q mut Vec<*mut rd::rd_kafka_message_t>,
}

impl<'q> Records<'q> {
    /// A batch from `queue`, into the buffer `messages` (whose capacity is
    /// the batch size).
    pub(crate) fn take(
        queue: &Queue,
        messages: &'q mut Vec<*mut rd::rd_kafka_message_t>,
        timeout: Duration,
    ) -> Self {
        queue.consume_batch(timeout, messages);
        Records { messages }
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The records, in the order librdkafka delivered them (per partition,
    /// by offset).
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            messages: self.messages.iter(),
            topic: None,
        }
    }
}

impl Drop for Records<'_> {
    fn drop(&mut self) {
        for &m in self.messages.iter() {
            // SAFETY: returned by the batch call, destroyed exactly once; no
            // record borrows it any more (they borrow `self`).
            unsafe { rd::rd_kafka_message_destroy(m) };
        }
        self.messages.clear();
    }
}

impl<'b> IntoIterator for &'b Records<'_> {
    type Item = Record<'b>;
    type IntoIter = Iter<'b>;
    fn into_iter(self) -> Iter<'b> {
        self.iter()
    }
}

/// The records of a [`Records`] batch. Records of one partition come in runs,
/// so a topic's name is looked up once per run, not per record.
#[derive(Debug)]
pub struct Iter<'b> {
    messages: std::slice::Iter<'b, *mut rd::rd_kafka_message_t>,
    /// The topic of the previous record, and its name.
    topic: Option<(&'b rd::rd_kafka_topic_t, &'b str)>,
}

impl<'b> Iterator for Iter<'b> {
    type Item = Record<'b>;

    fn next(&mut self) -> Option<Record<'b>> {
        let &m = self.messages.next()?;
        // SAFETY: a non-null message of the batch, alive until the batch is
        // dropped, which the borrow `'b` outlasts.
        let msg: &'b rd::rd_kafka_message_t = unsafe { &*m };
        let topic = match self.topic {
            Some((t, name)) if std::ptr::eq(t, msg.rkt) => name,
            _ => {
                // SAFETY: the message holds a reference on its topic while it
                // lives (`'b`); the pointer is checked for null first.
                let handle = unsafe { msg.rkt.as_ref() };
                let name = handle.map_or("", |t| {
                    // SAFETY: librdkafka returns the topic's NUL-terminated
                    // name, alive as long as the topic handle is.
                    unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(t)) }
                        .to_str()
                        .unwrap_or("")
                });
                self.topic = handle.map(|t| (t, name));
                name
            }
        };
        Some(Record { msg, topic })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.messages.size_hint()
    }
}

/// One record of a [`Records`] batch, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'b> {
    msg: &'b rd::rd_kafka_message_t,
    topic: &'b str,
}

impl<'b> Record<'b> {
    pub fn topic(&self) -> &'b str {
        self.topic
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
        // SAFETY: librdkafka's (pointer, length) of a message alive for 'b.
        unsafe { bytes(self.msg.payload as *const u8, self.msg.len) }
    }

    pub fn key(&self) -> Option<&'b [u8]> {
        // SAFETY: as for the payload.
        (!self.msg.key.is_null())
            .then(|| unsafe { bytes(self.msg.key as *const u8, self.msg.key_len) })
    }

    /// The Kafka timestamp in epoch ms, if the record has one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        // SAFETY: a live message; the type out-parameter may be null.
        let ts = unsafe { rd::rd_kafka_message_timestamp(self.msg, std::ptr::null_mut()) };
        (ts >= 0).then_some(ts)
    }
}

/// The bytes at `ptr`, `len` of them; empty for a null pointer.
///
/// # Safety
///
/// A non-null `ptr` points to `len` initialised bytes that stay alive and
/// unchanged for `'b`.
unsafe fn bytes<'b>(ptr: *const u8, len: usize) -> &'b [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: by this function's contract.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}
