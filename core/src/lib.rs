//! # tally-core: what the layers of Tally must agree on
//!
//! The speed layer, the batch layer and the serving layer never call each other;
//! they agree through this crate and through the data they leave in Kafka, Redis
//! and the object store.
//!
//! ## Layout
//!
//! - [`event`]: decoding and validating one Kafka record into an [`event::Event`],
//!   or a typed [`event::Reject`] reason for the dead-letter topic.
//! - [`view`]: view definitions and how an event maps to a group and measure inputs.
//! - [`config`]: `tally.toml` with `TALLY_…` environment overrides, validated.
//! - [`time`]: granularities (bucketing and roll-up) and ingest epochs.
//! - [`agg`]: aggregates as commutative monoids (count, sum, min, max, distinct).
//! - [`hll`]: a HyperLogLog that reads, writes and estimates exactly as Redis does.
//! - [`quantile`]: a mergeable quantile sketch (logarithmic buckets, 1 % relative error).
//! - [`keys`]: every Redis key; [`paths`]: every object-store path.
//! - [`manifest`]: the cut, archive progress and snapshot manifests (JSON, versioned).

pub mod agg;
pub mod config;
pub mod event;
pub mod hll;
pub mod keys;
pub mod manifest;
pub mod paths;
pub mod quantile;
pub mod time;
pub mod view;
