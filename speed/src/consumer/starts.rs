//! Where a newly assigned partition starts: the speed layer's side of the
//! rebalance callback ([`tally_kafka::Layer`]), and its lag metrics.
//!
//! A partition resumes at the offset Redis stores for it: the end of the
//! last chunk applied, by whichever process applied it. Without one (first
//! start, or Redis lost its memory) it is rebuilt from the snapshot cut
//! ([`crate::resume`]), marked `fresh` so that the apply script accepts a
//! start with no stored offset. Either way the partition is assigned
//! `kafka.seek_back` records early, and its [`ReadPosition`] decides what is
//! taken (see [`tally_kafka::resume`]).

use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::statistics::Statistics;
use rdkafka::Offset;
use tally_kafka::{plan_seek, Context, Layer, ReadPosition};
use tracing::warn;

use tally_core::keys::{Keys, Layout};
use tally_core::time::{Epoch, EpochGrid};

use crate::redis_con::SyncRedis;
use crate::resume::rebuild_offset;

/// The speed layer's consumer.
pub(super) type SpeedConsumer = BaseConsumer<Context<Starts>>;

/// Decides where assigned partitions start (see the module doc).
#[derive(Debug)]
pub(super) struct Starts {
    pub(super) redis: SyncRedis,
    pub(super) layout: Layout,
    pub(super) grid: EpochGrid,
    pub(super) seek_back: i64,
    /// The cut the published snapshots cover, refreshed by the consume
    /// thread: where a partition without a stored offset is rebuilt from.
    pub(super) snapshot_cut: Mutex<Option<Epoch>>,
}

/// Where an assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Start {
    /// Assigned where it seeks for the first offset to fold.
    pub(super) read: ReadPosition,
    /// Whether that offset is a rebuild point (no stored offset in Redis).
    pub(super) fresh: bool,
}

/// The first offset to fold, and whether it is a rebuild point.
#[derive(Debug, Clone, Copy)]
struct Target {
    offset: i64,
    fresh: bool,
}

impl Starts {
    pub(super) fn snapshot_cut(&self) -> Option<Epoch> {
        *self.snapshot_cut.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn set_snapshot_cut(&self, cut: Option<Epoch>) {
        *self.snapshot_cut.lock().unwrap_or_else(|e| e.into_inner()) = cut;
    }

    fn target(&self, consumer: &impl Consumer<Context<Self>>, topic: &str, p: i32) -> Target {
        let stored: Result<Option<i64>, redis::RedisError> = self.redis.query(
            redis::cmd("HGET")
                .arg(self.layout.keys_of(p).offsets())
                .arg(Keys::offset_field(topic, p)),
        );
        let cut = self.snapshot_cut();
        match stored {
            Ok(Some(o)) => Target {
                offset: o,
                fresh: false,
            },
            Ok(None) => match rebuild_offset(consumer, topic, p, cut, self.grid) {
                Ok(o) => Target {
                    offset: o,
                    fresh: true,
                },
                Err(e) => {
                    warn!(error = %e, topic, partition = p, "cannot find the rebuild offset; starting at 0");
                    Target {
                        offset: 0,
                        fresh: true,
                    }
                }
            },
            Err(e) => {
                // Unknown position: start from the rebuild point but not as a
                // rebuild; the script fences or resets it once Redis answers.
                warn!(error = %e, topic, partition = p, "Redis unreachable at assignment");
                Target {
                    offset: rebuild_offset(consumer, topic, p, cut, self.grid).unwrap_or(0),
                    fresh: false,
                }
            }
        }
    }
}

impl Layer for Starts {
    type Start = Start;

    fn start(
        &self,
        consumer: &impl Consumer<Context<Self>>,
        topic: &str,
        partition: i32,
    ) -> (Offset, Start) {
        let target = self.target(consumer, topic, partition);
        let mut read = plan_seek(consumer, topic, partition, target.offset, self.seek_back);
        // Assigning there is the seek.
        let from = read.pending_seek().unwrap_or(target.offset);
        read.seek_done();
        let start = Start {
            read,
            fresh: target.fresh,
        };
        (Offset::Offset(from), start)
    }

    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    metrics::gauge!("tally_speed_lag", "topic" => topic.clone(), "partition" => p.to_string())
                        .set(part.consumer_lag as f64);
                }
            }
        }
    }
}
