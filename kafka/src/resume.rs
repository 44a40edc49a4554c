//! Seek-back resume: reading a partition from an offset of our own.
//!
//! Both layers resume each partition from an offset they stored themselves
//! (Redis, the archive's progress), so they seek. Tansu 0.6 answers a fetch
//! at an offset inside a record batch with the *next* batch: the rest of the
//! requested batch is silently skipped (real Kafka returns the whole batch
//! and the client drops the lower offsets). The portable remedy is to seek
//! `kafka.seek_back` records before the target, at least the largest producer
//! batch ([`seek_position`]), and drop the records below the target
//! ([`ReadPosition::admit`]). Should a broker skip past the target anyway
//! (a seek-back smaller than a batch, or a gap in the log), the first record
//! after the seek says so in the log.

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use tracing::warn;

/// How long a watermark request may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to seek so that `target` is delivered even by a broker that skips
/// the rest of a record batch: `seek_back` records earlier, not below `low`
/// (the partition's low watermark: the first record still in the log).
pub fn seek_position(low: i64, target: i64, seek_back: i64) -> i64 {
    target.saturating_sub(seek_back).max(low).min(target)
}

/// [`seek_position`] from the partition's low watermark as the broker
/// reports it now (0 when it does not answer: a seek below the log start
/// reads from the log start). Blocks for up to 10 s.
pub fn seek_position_on<C: ConsumerContext + 'static>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
    target: i64,
    seek_back: i64,
) -> i64 {
    let low = consumer
        .fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)
        .map_or(0, |(low, _)| low);
    seek_position(low, target, seek_back)
}

/// How far a partition has been read since its last seek: records below the
/// position are the seek-back's replay (or were read already) and are
/// dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPosition {
    next: i64,
    /// No record has arrived since the seek to `next`.
    awaiting_first: bool,
}

impl ReadPosition {
    /// A partition just sought to deliver `target` next.
    pub fn at(target: i64) -> Self {
        ReadPosition {
            next: target,
            awaiting_first: true,
        }
    }

    /// The next offset to take: one past the last record taken.
    pub fn next(&self) -> i64 {
        self.next
    }

    /// Whether the record at `offset` of `topic`/`partition` is to be taken:
    /// true at or past the position, which then moves past it. Records come
    /// in offset order per partition, so each is taken at most once. The
    /// first record after a seek that lands past the target is logged: the
    /// broker skipped records (raise `kafka.seek_back`) or the log has a gap.
    #[inline]
    pub fn admit(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        if offset < self.next {
            return false;
        }
        if self.awaiting_first {
            self.awaiting_first = false;
            if offset > self.next {
                warn!(topic, partition, expected = self.next, got = offset,
                    "first record after a seek is past the target: the broker skipped records (raise kafka.seek_back) or the log has a gap");
            }
        }
        self.next = offset + 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeks_back_but_not_below_the_log_start() {
        assert_eq!(seek_position(0, 1_234, 10_000), 0);
        assert_eq!(seek_position(0, 50_000, 10_000), 40_000);
        assert_eq!(seek_position(45_000, 50_000, 10_000), 45_000);
        assert_eq!(seek_position(0, 5, 0), 5);
    }

    #[test]
    fn the_replay_below_the_target_is_dropped_and_each_record_taken_once() {
        let mut at = ReadPosition::at(100);
        let taken: Vec<i64> = [90, 99, 100, 100, 101, 103, 102, 104]
            .into_iter()
            .filter(|&o| at.admit("t", 0, o))
            .collect();
        assert_eq!(taken, [100, 101, 103, 104]);
        assert_eq!(at.next(), 105);
    }
}
