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
//! - [`delta`]: deltas folded from decoded events into the
//!   [`delta::Unflushed`] aggregates, cut into [`delta::Chunk`]s (aggregates
//!   plus one offset range per partition).
//! - [`apply`]: the fencing Lua script and the Redis side: apply chunks,
//!   one script call per partition group, report applied / fenced / reset.
//! - [`RedisCon`]: one Redis or a Redis Cluster behind one connection
//!   type (`redis.mode`).
//! - `resume`: where a partition is rebuilt from when Redis has no offset
//!   for it: the first record of the snapshot cut.
//! - `eviction`: the start-up check that Redis does not evict keys.
//! - `definitions`: a view whose definition changed is rebuilt from the
//!   snapshot cut (its slices never mix two definitions).
//! - `keepalive`: slices at or above the snapshot cut are renewed, so none
//!   expires before the batch covers it.
//! - `dead_letter`: rejected records to the dead-letter topic, with reasons.
//! - `dedup`: the bounded window of event_ids counted, for views with
//!   `dedup = "event_id"` (a retry it sees is left out of them).
//! - `consumer`: the run time that ties these together: the consume
//!   thread, the flusher behind a bounded queue (backpressure), where
//!   assigned partitions start, and shutdown. The Kafka plumbing it shares
//!   with the archiver (settings, rebalances, seek-back, batched reads) is
//!   `tally-kafka`.
//! - `error`: the crate's error type.
//!
//! ## What is public
//!
//! [`run`] (with [`SpeedSummary`] and [`SpeedError`]) for the binary, and
//! the chunk protocol the fencing tests drive directly: [`delta`] (fold
//! events into a [`delta::Chunk`]) and [`apply`] (apply it, see it fenced).
//! Everything else is private to the crate and tested through [`run`].

pub mod apply;
mod consumer;
mod dead_letter;
mod dedup;
mod definitions;
pub mod delta;
mod error;
mod eviction;
mod hash_encoding;
mod keepalive;
mod redis_con;
mod resume;

pub use consumer::{run, SpeedSummary};
pub use error::SpeedError;
pub use redis_con::RedisCon;
