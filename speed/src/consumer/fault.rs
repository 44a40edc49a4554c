//! Test support: a seek that librdkafka really refuses, at a resync.
//!
//! A seek on an assigned partition is local to librdkafka (its partition
//! thread answers at once, even with the broker unreachable: the seek applies
//! when the connection is back), so the one way a resync's seek fails for
//! real is a partition that librdkafka has not (or no longer) assigned: it
//! answers "Local: Erroneous state". [`fail_seeks_at_next_resync`] arms
//! exactly that: at the next resync the partition is unassigned in
//! librdkafka just before the seeks, so they fail, and after a number of
//! failed tries it is assigned back at the end of its log, where a consumer
//! whose failed seek was taken as done would read on (skipping everything
//! between the target and the end). Nothing here runs unless a test arms it:
//! one uncontended lock per resync and per failed seek.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::starts::SpeedConsumer;

#[derive(Debug)]
struct Armed {
    topic: String,
    partition: i32,
    /// Failed seeks after which the partition is assigned back.
    failures: u32,
    /// Whether the partition is unassigned now (the fault is in effect).
    unassigned: bool,
    failed: Arc<AtomicU32>,
}

static ARMED: Mutex<Option<Armed>> = Mutex::new(None);

fn armed() -> std::sync::MutexGuard<'static, Option<Armed>> {
    ARMED.lock().unwrap_or_else(|e| e.into_inner())
}

/// At the next resync of any speed layer in this process, unassign
/// `topic`/`partition` in librdkafka before the seeks, and assign it back at
/// the end of its log after `failures` failed seeks of it. Returns the count
/// of its failed seeks.
#[doc(hidden)]
pub fn fail_seeks_at_next_resync(topic: &str, partition: i32, failures: u32) -> Arc<AtomicU32> {
    let failed = Arc::new(AtomicU32::new(0));
    *armed() = Some(Armed {
        topic: topic.to_owned(),
        partition,
        failures: failures.max(1),
        unassigned: false,
        failed: failed.clone(),
    });
    failed
}

fn one(topic: &str, partition: i32, offset: Offset) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    if let Err(e) = tpl.add_partition_offset(topic, partition, offset) {
        tracing::warn!(error = %e, "fault injection: bad partition");
    }
    tpl
}

/// A resync is about to seek: put the armed fault in effect.
pub(super) fn before_resync_seeks(consumer: &SpeedConsumer) {
    let mut armed = armed();
    let Some(a) = armed.as_mut().filter(|a| !a.unassigned) else {
        return;
    };
    let tpl = one(&a.topic, a.partition, Offset::Invalid);
    match consumer.incremental_unassign(&tpl) {
        Ok(()) => {
            tracing::warn!(topic = %a.topic, partition = a.partition, "fault injection: partition unassigned before the resync's seeks");
            a.unassigned = true;
        }
        Err(e) => tracing::warn!(error = %e, "fault injection: unassign failed"),
    }
}

/// A seek of `topic`/`partition` failed: once the armed fault has made it
/// fail often enough, assign the partition back, at the end of its log.
pub(super) fn seek_failed(consumer: &SpeedConsumer, topic: &str, partition: i32) {
    let mut guard = armed();
    let Some(a) = guard
        .as_mut()
        .filter(|a| a.unassigned && a.partition == partition && a.topic == topic)
    else {
        return;
    };
    if a.failed.fetch_add(1, Ordering::SeqCst) + 1 < a.failures {
        return;
    }
    // Routed first, as the rebalance callback does (see `Context::route`).
    let tpl = one(topic, partition, Offset::End);
    if !consumer.context().route(consumer, topic, partition) {
        tracing::warn!(topic, partition, "fault injection: partition not routed");
    }
    match consumer.incremental_assign(&tpl) {
        Ok(()) => tracing::warn!(
            topic,
            partition,
            "fault injection: partition assigned back at the end of its log"
        ),
        Err(e) => tracing::warn!(error = %e, "fault injection: assign failed"),
    }
    *guard = None;
}
