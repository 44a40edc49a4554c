//! Seek-back resume: reading a partition from an offset of our own, and
//! never taking a gap for progress.
//!
//! Both layers resume each partition from an offset they stored themselves
//! (Redis, the archive's progress), so they seek, and what arrives after a
//! seek is checked before anything is taken ([`ReadPosition`]):
//!
//! - **Tansu skips the rest of a record batch** when a fetch starts inside it
//!   (real Kafka returns the whole batch and the client drops the lower
//!   offsets). So a seek goes `kafka.seek_back` records before the target, at
//!   least the largest producer batch ([`seek_position`]), and the records
//!   below the target are dropped.
//! - **The first record after a seek is past the target** (a seek-back
//!   smaller than a batch, or a seek that failed and left the consumer
//!   ahead): it is not taken, and the partition seeks again, twice as far
//!   back ([`Admit::SeekBack`]), until a record at or below the target
//!   arrives. Only a seek from the first record still in the log can show a
//!   real gap (records deleted by retention before they were read, or
//!   compacted away): those are not in the log, and the first record that is
//!   gets taken, reported as an [`Admit::Gap`].
//! - **The target is beyond the end of the log** (the topic was deleted and
//!   created again, the broker lost its storage): the stored offset calls
//!   records done that the log now holds under the same offsets. A seek never
//!   starts past the log's last record, so reading reaches the end of the log
//!   below the target ([`ReadPosition::at_end`], from librdkafka's
//!   end-of-partition event), and the partition stops ([`PastEnd`]) instead of
//!   dropping what it reads as done. (Tansu reports a high watermark up to a
//!   batch short of the end, but `high - 1` is where its last batch starts,
//!   so a seek there is answered too.)
//! - **A seek that fails**: the seek stays pending
//!   ([`ReadPosition::pending_seek`]) and nothing is taken until one succeeds.

use std::fmt;

use rdkafka::consumer::{Consumer, ConsumerContext};
use tracing::warn;

use crate::partitions::{watermarks, Watermarks};

/// Where to seek so that `target` is delivered even by a broker that skips
/// the rest of a record batch: `seek_back` records earlier, inside the log
/// (not below its first record, not past its last one as reported).
pub fn seek_position(w: Watermarks, target: i64, seek_back: i64) -> i64 {
    let last = w.high.saturating_sub(1).max(w.low);
    target.saturating_sub(seek_back).min(last).max(w.low)
}

/// A position that must first seek to deliver `target`, planned from where
/// the broker says the partition's log is now (blocks for up to 10 s; the
/// whole offset range is assumed if it does not answer). An assignment at
/// the pending seek's offset is that seek.
pub fn plan_seek<C: ConsumerContext + 'static>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
    target: i64,
    seek_back: i64,
) -> ReadPosition {
    let w = watermarks(consumer, topic, partition).unwrap_or_else(|e| {
        warn!(error = %e, topic, partition, "no watermarks: seeking without them");
        Watermarks::UNKNOWN
    });
    ReadPosition::seek(target, seek_position(w, target, seek_back), w.low)
}

/// How far a partition has been read, and what the records arriving after
/// a seek may be taken as (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPosition {
    /// The next offset to take.
    next: i64,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A seek to `from` is to be done; nothing is taken until it is.
    Seek { from: i64, low: i64 },
    /// Sought to `from` (the log then started at `low`); no record has
    /// arrived since.
    Sought { from: i64, low: i64 },
    /// The broker delivered from at or below `next`: records come in order.
    Reading,
    /// The log ends below `next`: nothing is taken again.
    Stopped,
}

/// What to do with a record ([`ReadPosition::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Admit {
    Take,
    /// Below the position (the seek-back's replay), or waiting for a seek.
    Drop,
    /// The first record after a seek is past the target: not taken; seek
    /// again to [`ReadPosition::pending_seek`].
    SeekBack,
    /// Take it: the offsets before it are not in the log.
    Gap(Gap),
}

/// Offsets `[from, to)` that a seek from the log's first record found
/// missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub from: i64,
    pub to: i64,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "offsets {} to {} are not in the log (deleted by retention before they were read, or compacted away): reading on from {}",
            self.from,
            self.to - 1,
            self.to
        )
    }
}

/// The log ends below the position a layer stored for the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the log ends at offset {end}, below the stored position {next}: the topic was deleted and created again, or the broker lost its records. Reading on would take the new records below {next} as done, so the partition is stopped")]
pub struct PastEnd {
    /// One past the log's last record.
    pub end: i64,
    /// The position stored for the partition.
    pub next: i64,
}

impl ReadPosition {
    /// A partition that must seek to `from` (at or below `target`, unless
    /// `target` is below the log's start `low`) to deliver `target` next:
    /// seek, then call [`ReadPosition::seek_done`].
    pub fn seek(target: i64, from: i64, low: i64) -> Self {
        ReadPosition {
            next: target,
            phase: Phase::Seek { from, low },
        }
    }

    /// A partition already sought (or assigned) at `from` to deliver
    /// `target` next, the log then starting at `low`.
    pub fn sought(target: i64, from: i64, low: i64) -> Self {
        ReadPosition {
            next: target,
            phase: Phase::Sought { from, low },
        }
    }

    /// The next offset to take: one past the last record taken.
    pub fn next(&self) -> i64 {
        self.next
    }

    /// Where to seek, if a seek is pending.
    pub fn pending_seek(&self) -> Option<i64> {
        match self.phase {
            Phase::Seek { from, .. } => Some(from),
            _ => None,
        }
    }

    /// The pending seek succeeded.
    pub fn seek_done(&mut self) {
        if let Phase::Seek { from, low } = self.phase {
            self.phase = Phase::Sought { from, low };
        }
    }

    /// Whether the partition stopped at the end of its log ([`PastEnd`]).
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// Whether the position is known to be in the log: since the last seek
    /// a record at or below it arrived, or the log was seen to end exactly
    /// there. Until then, an end offset the broker reports says nothing of
    /// what was read.
    pub fn is_reading(&self) -> bool {
        self.phase == Phase::Reading
    }

    /// What to do with the record at `offset` of `topic`/`partition` (named
    /// in the log when it is not simply taken or dropped). Records come in
    /// offset order per partition, so each is taken at most once.
    #[inline]
    pub fn admit(&mut self, topic: &str, partition: i32, offset: i64) -> Admit {
        match self.phase {
            Phase::Reading => {
                if offset < self.next {
                    return Admit::Drop;
                }
                self.next = offset + 1;
                Admit::Take
            }
            Phase::Sought { .. } if offset <= self.next => {
                self.phase = Phase::Reading;
                self.admit(topic, partition, offset)
            }
            Phase::Sought { from, low } if from <= low => {
                // Read from the log's first record: nothing lies between.
                let gap = Gap {
                    from: self.next,
                    to: offset,
                };
                warn!(topic, partition, "{gap}");
                self.phase = Phase::Reading;
                self.next = offset + 1;
                Admit::Gap(gap)
            }
            Phase::Sought { from, low } => {
                let back = (self.next - from).max(1).saturating_mul(2);
                let again = self.next.saturating_sub(back).max(low);
                warn!(topic, partition, target = self.next, got = offset, seek = again,
                    "the first record after a seek is past the target (the broker skipped records: kafka.seek_back should be at least the largest producer batch, or the seek did not happen): seeking further back");
                self.phase = Phase::Seek { from: again, low };
                Admit::SeekBack
            }
            Phase::Seek { .. } | Phase::Stopped => Admit::Drop,
        }
    }

    /// The partition's log ends at `end` (one past its last record), as
    /// the broker answered a fetch since the last seek. Below the position,
    /// the partition stops; exactly at it, the position is in the log.
    pub fn at_end(&mut self, end: i64) -> Result<(), PastEnd> {
        match self.phase {
            Phase::Sought { .. } | Phase::Reading if end < self.next => {
                self.phase = Phase::Stopped;
                Err(PastEnd {
                    end,
                    next: self.next,
                })
            }
            Phase::Sought { .. } if end == self.next => {
                self.phase = Phase::Reading;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(low: i64, high: i64) -> Watermarks {
        Watermarks { low, high }
    }

    #[test]
    fn seeks_back_inside_the_log() {
        assert_eq!(seek_position(w(0, 60_000), 1_234, 10_000), 0);
        assert_eq!(seek_position(w(0, 60_000), 50_000, 10_000), 40_000);
        assert_eq!(seek_position(w(45_000, 60_000), 50_000, 10_000), 45_000);
        assert_eq!(seek_position(w(0, 60_000), 5, 0), 5);
        // Past the reported end: from the last record (Tansu: last batch).
        assert_eq!(seek_position(w(0, 2_001), 2_500, 0), 2_000);
        assert_eq!(seek_position(w(0, 300), 5_000, 10_000), 0);
        // An empty log, and a target below the log's start.
        assert_eq!(seek_position(w(700, 700), 5_000, 10), 700);
        assert_eq!(seek_position(w(700, 900), 100, 10), 700);
        assert_eq!(seek_position(Watermarks::UNKNOWN, 50, 10), 40);
    }

    fn take(at: &mut ReadPosition, offsets: &[i64]) -> Vec<i64> {
        offsets
            .iter()
            .copied()
            .filter(|&o| matches!(at.admit("t", 0, o), Admit::Take | Admit::Gap(_)))
            .collect()
    }

    #[test]
    fn the_replay_below_the_target_is_dropped_and_each_record_taken_once() {
        let mut at = ReadPosition::sought(100, 90, 0);
        assert_eq!(
            take(&mut at, &[90, 99, 100, 100, 101, 103, 102, 104]),
            [100, 101, 103, 104]
        );
        assert_eq!(at.next(), 105);
    }

    #[test]
    fn a_first_record_past_the_target_seeks_further_back_until_one_is_not() {
        let mut at = ReadPosition::sought(1_234, 1_230, 0);
        // The broker skipped to the next batch: nothing of it is taken.
        assert_eq!(at.admit("t", 0, 2_000), Admit::SeekBack);
        assert_eq!(at.admit("t", 0, 2_001), Admit::Drop);
        assert_eq!(at.pending_seek(), Some(1_226));
        at.seek_done();
        assert_eq!(at.admit("t", 0, 2_000), Admit::SeekBack);
        assert_eq!(at.pending_seek(), Some(1_218), "twice as far back");
        at.seek_done();
        assert_eq!(at.admit("t", 0, 1_000), Admit::Drop);
        assert_eq!(take(&mut at, &[1_001, 1_234, 1_235]), [1_234, 1_235]);
    }

    #[test]
    fn nothing_is_taken_while_a_seek_is_pending() {
        // A resync whose seek failed: the consumer is still ahead.
        let mut at = ReadPosition::seek(500, 400, 0);
        assert_eq!(take(&mut at, &[700, 701, 450, 500]), Vec::<i64>::new());
        assert_eq!(
            at.at_end(10),
            Ok(()),
            "an end seen before the seek is stale"
        );
        at.seek_done();
        assert_eq!(take(&mut at, &[400, 500, 501]), [500, 501]);
    }

    #[test]
    fn only_a_seek_from_the_log_start_finds_a_real_gap() {
        // Retention deleted 100..700 before they were read.
        let mut at = ReadPosition::sought(100, 700, 700);
        assert_eq!(
            at.admit("t", 0, 700),
            Admit::Gap(Gap { from: 100, to: 700 })
        );
        assert_eq!(take(&mut at, &[701]), [701]);
        let mut at = ReadPosition::sought(50, 0, 0);
        assert_eq!(at.admit("t", 0, 60), Admit::Gap(Gap { from: 50, to: 60 }));
        // Seeking back never goes below the log start.
        let mut at = ReadPosition::sought(50, 40, 30);
        assert_eq!(at.admit("t", 0, 60), Admit::SeekBack);
        assert_eq!(at.pending_seek(), Some(30));
    }

    #[test]
    fn a_log_that_ends_below_the_position_stops_the_partition() {
        let mut at = ReadPosition::sought(5_000, 0, 0);
        assert_eq!(take(&mut at, &[0, 1, 299]), Vec::<i64>::new());
        assert_eq!(
            at.at_end(300),
            Err(PastEnd {
                end: 300,
                next: 5_000
            })
        );
        assert!(at.is_stopped());
        assert_eq!(take(&mut at, &[5_000, 5_001]), Vec::<i64>::new());
        // Reaching the end at or past the position is the normal case.
        let mut at = ReadPosition::sought(300, 0, 0);
        assert!(!at.is_reading());
        assert_eq!(at.at_end(300), Ok(()));
        assert!(
            at.is_reading(),
            "an empty rest of the log confirms the position"
        );
        assert_eq!(take(&mut at, &[300]), [300]);
        assert_eq!(at.at_end(301), Ok(()));
    }

    #[test]
    fn near_the_ends_of_the_offset_range_nothing_overflows() {
        assert_eq!(seek_position(w(0, i64::MAX), i64::MAX, i64::MAX), 0);
        assert_eq!(seek_position(w(i64::MAX, i64::MAX), 0, 10), i64::MAX);
        let mut at = ReadPosition::sought(i64::MAX - 1, 1, 0);
        assert_eq!(at.admit("t", 0, i64::MAX), Admit::SeekBack);
        assert_eq!(at.pending_seek(), Some(0));
    }
}
