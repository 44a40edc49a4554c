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
//! - [`config`]: `tally.toml` with `TALLY_…` environment overrides, validated;
//!   [`kafka_security`] its TLS and SASL section, [`secret`] values never printed.
//! - [`time`]: granularities (bucketing and roll-up) and ingest epochs.
//! - [`agg`]: aggregates as commutative monoids (count, sum, min, max, distinct).
//! - [`hll`]: a HyperLogLog that reads, writes and estimates exactly as Redis does.
//! - [`quantile`]: a mergeable quantile sketch (logarithmic buckets, 1 % relative error).
//! - [`keys`]: every Redis key; [`slice_log`] the change logs a reader of a
//!   slice follows (the quantile log, the sketch log, the [`counter_log`]).
//!
//! What is stored in the object store (paths, manifests, the cut, archive
//! progress, snapshot files) is `tally-store`'s: storage formats with their
//! readers and writers, kept out of this crate, which does no I/O.

pub mod agg;
pub mod config;
pub mod counter_log;
pub mod event;
pub mod hll;
pub mod kafka_security;
pub mod keys;
pub mod quantile;
pub mod secret;
pub mod slice_log;
pub mod time;
pub mod view;
