//! # tally-speed: Kafka to Redis counters, effectively-once
//!
//! The speed layer is a consumer-group member that turns records into
//! real-time counters. Its guarantee: every valid record of an assigned
//! partition is counted in Redis exactly once, whatever crashes, restarts,
//! rebalances or Redis restarts happen, because counter deltas and the new
//! offsets of the partitions they came from are written by one Lua script
//! call that applies only if Redis stores each partition's start offset.
//!
//! ## Layout
//!
//! - [`delta`]: deltas folded from decoded events, cut into
//!   [`delta::Chunk`]s (aggregates plus one offset range per partition).
//! - [`apply`]: the fencing Lua script and the Redis side: apply chunks,
//!   report applied / fenced / reset.
//! - [`resume`]: where a partition resumes: the fenced offset in Redis, or the
//!   first record of the batch cut when Redis has none.
//! - [`dead_letter`]: rejected records to the dead-letter topic, with reasons.
//! - [`fetch_queue`]: assigned partitions' records, read from librdkafka a
//!   batch at a time (the small unsafe layer rdkafka-rs lacks).
//! - [`consumer`]: the rdkafka consume loop that ties these together, with a
//!   bounded queue to the flusher (backpressure) and shutdown.
//! - [`error`]: the crate's error type.

pub mod apply;
pub mod consumer;
pub mod dead_letter;
pub mod delta;
pub mod error;
pub mod fetch_queue;
pub mod resume;

pub use consumer::run;
pub use error::SpeedError;
