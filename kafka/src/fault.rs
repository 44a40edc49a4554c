//! Test support: a seek that librdkafka really refuses, when a layer seeks
//! a partition again (the speed layer's resync, the archiver's seek further
//! back).
//!
//! A seek on an assigned partition is local to librdkafka: its partition
//! thread answers at once, even with the broker unreachable (the seek
//! applies when the connection is back), and a 1 ms timeout did not fail
//! once in 200 tries. The one way such a seek fails for real is a partition
//! that librdkafka has not (or no longer) assigned: "Local: Erroneous
//! state". [`fail_seeks_from_next_reseek`] arms exactly that: when a layer
//! next seeks again ([`reseeking`]) the partition is unassigned in
//! librdkafka just before the seeks, so they fail, and after a number of
//! failed tries ([`seek_failed`]) it is assigned back at the end of its log,
//! where a consumer whose failed seek was taken as done would read on,
//! skipping everything between its target and the end. Nothing here acts
//! unless a test arms it: one uncontended lock per re-seek and per failed
//! seek.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use crate::rebalance::{Context, Layer};

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

fn armed() -> MutexGuard<'static, Option<Armed>> {
    ARMED.lock().unwrap_or_else(|e| e.into_inner())
}

/// When a consumer of this process next seeks again, unassign
/// `topic`/`partition` in librdkafka before its seeks, and assign it back at
/// the end of its log after `failures` failed seeks of it. Returns the count
/// of its failed seeks.
pub fn fail_seeks_from_next_reseek(topic: &str, partition: i32, failures: u32) -> Arc<AtomicU32> {
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
        warn!(error = %e, "fault injection: bad partition");
    }
    tpl
}

/// The layer is about to seek partitions again: put an armed fault in
/// effect.
pub fn reseeking<L: Layer>(consumer: &impl Consumer<Context<L>>) {
    let mut armed = armed();
    let Some(a) = armed.as_mut().filter(|a| !a.unassigned) else {
        return;
    };
    match consumer.incremental_unassign(&one(&a.topic, a.partition, Offset::Invalid)) {
        Ok(()) => {
            warn!(topic = %a.topic, partition = a.partition, "fault injection: partition unassigned before its seek");
            a.unassigned = true;
        }
        Err(e) => warn!(error = %e, "fault injection: unassign failed"),
    }
}

/// A seek of `topic`/`partition` failed: once the armed fault has made it
/// fail often enough, assign the partition back, at the end of its log.
pub fn seek_failed<L: Layer>(consumer: &impl Consumer<Context<L>>, topic: &str, partition: i32) {
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
    // Routed first, as the rebalance callback does: librdkafka clears an
    // application's forward when it stops a partition, and a partition
    // assigned again without it keeps its records to itself.
    consumer.context().router.route(consumer, topic, partition);
    // At the end as it is now: an explicit offset, not `Offset::End`, whose
    // lookup could still be answered after the layer's next seek.
    let end = match crate::partitions::watermarks(consumer, topic, partition) {
        Ok(w) => Offset::Offset(w.high),
        Err(_) => Offset::End,
    };
    match consumer.incremental_assign(&one(topic, partition, end)) {
        Ok(()) => warn!(
            topic,
            partition, "fault injection: partition assigned back at the end of its log"
        ),
        Err(e) => warn!(error = %e, "fault injection: assign failed"),
    }
    *guard = None;
}
