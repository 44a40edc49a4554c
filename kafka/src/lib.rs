//! # tally-kafka: the Kafka plumbing the speed layer and the archiver share
//!
//! Both consume the same topics with librdkafka (through rdkafka), and both
//! keep their own offsets (Redis, the archive's progress objects): Kafka's
//! committed offsets are advisory. What that takes is written once, here. It
//! is not a layer: it knows nothing of counters, files or views (the crate
//! depends on `tally-core` only for the `[kafka]` config section), and the
//! layers plug their decisions into it through [`Layer`].
//!
//! ## Layout
//!
//! - `settings`: one librdkafka configuration for every Tally consumer
//!   (the prefetch settings from `[kafka]`, the group session timings).
//! - `rebalance`: the consumer context. Its rebalance callback asks the
//!   layer where each newly assigned partition starts, assigns, and records
//!   the change for the layer's loop; `kafka.assignment = "all"` or
//!   `"partitions"` runs the same code over every or the listed partitions
//!   ([`assign`], [`chosen_partitions`]).
//! - `partitions`: what the broker says about partitions: how many a
//!   topic has, where each one's log starts and ends.
//! - `resume`: seek-back resume: seeking `kafka.seek_back` records early
//!   (Tansu skips the rest of a record batch on a mid-batch seek), dropping
//!   what lies below the target, and never taking a gap for progress: a
//!   seek that lands past its target seeks further back, a failed seek is
//!   retried, and a stored position beyond the end of the log stops the
//!   partition.
//! - `reader`: a consumer that reads its partitions' records a batch at a
//!   time through a queue of its own; the unsafe layer under it is private,
//!   and the types enforce its contract (the queue never outlives the
//!   consumer, records never outlive their batch).
//! - `fault` (hidden): test support, a seek that librdkafka really refuses.

#[doc(hidden)]
pub mod fault;
mod fetch_queue;
mod partitions;
mod reader;
mod rebalance;
mod resume;
mod settings;

pub use partitions::{
    chosen_partitions, fetched_end, partition_counts, watermarks, NoSuchPartition, Watermarks,
};
pub use reader::{Iter, Reader, Record, Records};
pub use rebalance::{assign, Change, Context, Layer, Recorder};
pub use resume::{plan_seek, seek_position, Admit, Gap, PastEnd, ReadPosition};
pub use settings::{client_config, consumer_config};

/// A topic partition: (topic, partition).
pub type Tp = (String, i32);
