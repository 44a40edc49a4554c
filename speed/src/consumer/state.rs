//! What the consume thread mutates per record: each assigned partition's
//! offsets, and the aggregates of every partition not yet flushed.
//!
//! A partition's records since its last chunk are the offsets
//! `[start, end)`: every one of them was folded into the shared
//! [`Unflushed`] aggregates or rejected. Cutting a chunk takes the aggregates
//! and every partition's range together, so each chunk is exactly the
//! records of its ranges. Which records a partition takes after a seek is
//! its [`ReadPosition`]'s decision: nothing past the target until a record at
//! or below it has arrived, nothing while a seek is pending, nothing once
//! the log turned out to end below the stored offset.

use std::collections::HashMap;

use tokio::sync::mpsc as tmpsc;

use tally_core::event::{decode, Event, Limits};
use tally_core::keys::Layout;
use tally_core::time::kafka_time;
use tally_kafka::{Admit, Change, PastEnd, ReadPosition, Recorder, Tp};

use super::starts::Start;
use crate::dead_letter::{DeadLetters, Source};
use crate::delta::{Ahead, At, Chunk, Folder, Range, Unflushed, LOOK_AHEAD};

/// One assigned partition.
#[derive(Debug)]
pub(super) struct PartitionState {
    /// First offset not yet in a chunk.
    pub(super) start: i64,
    /// Where reading is: one past the last offset folded (or rejected).
    pub(super) read: ReadPosition,
    /// Whether `start` is a rebuild point (no stored offset in Redis).
    pub(super) fresh: bool,
    /// Offsets applied (Redis) and committed (Kafka, advisory) so far.
    pub(super) applied_to: i64,
    pub(super) committed_to: i64,
    /// The partition group its records are folded into.
    pub(super) group: u32,
}

impl PartitionState {
    /// A partition to be read from `read`'s next offset on.
    pub(super) fn new(read: ReadPosition, fresh: bool, group: u32) -> Self {
        let target = read.next();
        PartitionState {
            start: target,
            read,
            fresh,
            committed_to: target,
            applied_to: target,
            group,
        }
    }

    /// One past the last offset folded.
    pub(super) fn end(&self) -> i64 {
        self.read.next()
    }

    /// Whether records were folded since the last chunk.
    fn moved(&self) -> bool {
        self.end() > self.start
    }
}

/// A record admitted and decoded, waiting for its fold.
struct Admitted<'a> {
    group: u32,
    at: At<'a>,
    event: Event<'a>,
    ahead: Ahead,
}

/// What a batch holds, in order.
pub(super) enum Next<'a> {
    Rec(Rec<'a>),
    /// A partition's fetch reached the end of its log, at this offset.
    End(&'a str, i32, i64),
}

/// What the hot path mutates, apart from the consumer it reads.
#[derive(Debug)]
pub(super) struct State {
    pub(super) folder: Folder,
    /// Which partition group each partition belongs to.
    pub(super) layout: Layout,
    pub(super) limits: Limits,
    pub(super) dead: DeadLetters,
    pub(super) parts: HashMap<Tp, PartitionState>,
    pub(super) unflushed: Unflushed,
    pub(super) generation: u64,
    /// Some partition waits for a seek ([`ReadPosition::pending_seek`]).
    pub(super) seeks_pending: bool,
    /// Partitions whose log ends below their stored offset, not yet paused.
    pub(super) past_end: Vec<(Tp, PastEnd)>,
}

/// One record, from either queue (the reader's or the consumer's).
#[derive(Debug)]
pub(super) struct Rec<'a> {
    pub(super) topic: &'a str,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) timestamp_ms: Option<i64>,
    pub(super) key: Option<&'a [u8]>,
    pub(super) payload: &'a [u8],
}

impl State {
    pub(super) fn new(folder: Folder, layout: Layout, limits: Limits, dead: DeadLetters) -> Self {
        State {
            folder,
            layout,
            limits,
            dead,
            parts: HashMap::new(),
            unflushed: Unflushed::default(),
            generation: 1,
            seeks_pending: false,
            past_end: Vec::new(),
        }
    }

    /// Admit and fold one record.
    pub(super) fn on_record(&mut self, msg: &Rec<'_>) {
        if let Some(r) = self.admit(msg) {
            self.fold(r);
        }
    }

    /// Admit and fold a batch of records, each folded [`LOOK_AHEAD`]
    /// records after it was decoded: the dedup window's memory reads for
    /// the records between are then under way together.
    pub(super) fn on_records<'a>(&mut self, batch: impl Iterator<Item = Next<'a>>) {
        let mut ahead = Vec::with_capacity(LOOK_AHEAD);
        for next in batch {
            match next {
                Next::Rec(msg) => {
                    if let Some(r) = self.admit(&msg) {
                        ahead.push(r);
                    }
                    if ahead.len() == LOOK_AHEAD {
                        ahead.drain(..).for_each(|r| self.fold(r));
                    }
                }
                // A partition's end is checked against what it admitted:
                // folding does not move that.
                Next::End(topic, partition, end) => self.on_end(topic, partition, end),
            }
        }
        ahead.drain(..).for_each(|r| self.fold(r));
    }

    /// A record to fold, decoded and looked up in the dedup window; or
    /// `None` when it is not ours, not due, or rejected (to the dead
    /// letters).
    fn admit<'a>(&mut self, msg: &Rec<'a>) -> Option<Admitted<'a>> {
        let (topic, partition, offset) = (msg.topic, msg.partition, msg.offset);
        // Avoid allocating the key for the lookup on the hot path.
        let part = self
            .parts
            .iter_mut()
            .find(|((t, p), _)| *p == partition && t == topic)
            .map(|(_, part)| part)?; // not (or no longer) ours
        match part.read.admit(topic, partition, offset) {
            Admit::Take => {}
            Admit::Drop => return None, // below the target of a seek, or already folded
            Admit::SeekBack => {
                self.seeks_pending = true;
                return None;
            }
            Admit::Gap(gap) => {
                metrics::counter!("tally_speed_missing_offsets_total",
                    "topic" => topic.to_owned(), "partition" => partition.to_string())
                .increment((gap.to - gap.from) as u64);
            }
        }
        let group = part.group;
        let kafka_ts = kafka_time(msg.timestamp_ms);
        let payload = msg.payload;
        let at = At {
            topic,
            partition,
            offset,
            kafka_ts_ms: kafka_ts,
        };
        match decode(payload, kafka_ts, &self.limits) {
            Ok(event) => {
                let ahead = self.folder.look_ahead(&at, &event);
                Some(Admitted {
                    group,
                    at,
                    event,
                    ahead,
                })
            }
            Err(reject) => {
                self.dead.send(
                    msg.key,
                    payload,
                    &reject,
                    Source {
                        topic,
                        partition,
                        offset,
                    },
                );
                None
            }
        }
    }

    fn fold(&mut self, r: Admitted<'_>) {
        self.folder
            .fold_ahead(&mut self.unflushed, r.group, r.at, &r.event, r.ahead);
    }

    /// The fetch of `topic`/`partition` reached the end of its log, at
    /// `end`: below the partition's position, it stops (the loop pauses it).
    pub(super) fn on_end(&mut self, topic: &str, partition: i32, end: i64) {
        let Some((tp, part)) = self
            .parts
            .iter_mut()
            .find(|((t, p), _)| *p == partition && t == topic)
        else {
            return;
        };
        if let Err(e) = part.read.at_end(end) {
            self.past_end.push((tp.clone(), e));
        }
    }

    /// Apply the assignment changes the rebalance callback recorded. Records
    /// of a revoked partition are flushed first: they share the aggregates
    /// with the others (the next owner's fencing sorts out who wins).
    /// Returns false if the flusher is gone.
    pub(super) fn take_assignment_changes(
        &mut self,
        changes: &Recorder<Start>,
        tx: &tmpsc::Sender<Chunk>,
    ) -> bool {
        for c in changes.take() {
            match c {
                Change::Assigned(tp, start) => {
                    metrics::gauge!("tally_speed_partition_stopped",
                        "topic" => tp.0.clone(), "partition" => tp.1.to_string())
                    .set(0.0);
                    let group = self.layout.group_of(tp.1);
                    self.parts
                        .insert(tp, PartitionState::new(start.read, start.fresh, group));
                }
                Change::Revoked(tp) => {
                    if self.parts.get(&tp).is_some_and(PartitionState::moved) && !self.flush(tx) {
                        return false;
                    }
                    self.parts.remove(&tp);
                }
                Change::RevokedAll => {
                    if self.parts.values().any(PartitionState::moved) && !self.flush(tx) {
                        return false;
                    }
                    self.parts.clear();
                }
            }
        }
        true
    }

    /// Cut the aggregates into a chunk and queue it. Blocks while the queue
    /// is full (backpressure). Returns false if the flusher is gone.
    pub(super) fn flush(&mut self, tx: &tmpsc::Sender<Chunk>) -> bool {
        match self.take_chunk() {
            None => true,
            Some(chunk) => tx.blocking_send(chunk).is_ok(),
        }
    }

    /// Start a new generation: answers about chunks cut before are stale.
    pub(super) fn bump(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// The aggregates and every moved partition's range as a chunk, or
    /// `None` if no partition moved.
    fn take_chunk(&mut self) -> Option<Chunk> {
        let ranges: Vec<Range> = self
            .parts
            .iter_mut()
            .filter(|(_, p)| p.moved())
            .map(|((topic, partition), p)| {
                let r = Range {
                    topic: topic.clone(),
                    partition: *partition,
                    start: p.start,
                    end: p.end(),
                    fresh: p.fresh,
                };
                p.start = p.end();
                p.fresh = false;
                r
            })
            .collect();
        if ranges.is_empty() {
            return None;
        }
        let duplicates = std::mem::take(&mut self.unflushed.duplicates);
        if duplicates > 0 {
            metrics::counter!("tally_speed_duplicates_total").increment(duplicates);
        }
        let (slices, events) = self.unflushed.take();
        Some(Chunk {
            generation: self.generation,
            ranges,
            slices,
            events,
        })
    }
}
