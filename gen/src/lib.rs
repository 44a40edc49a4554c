//! # tally-gen: synthetic events with a realistic shape
//!
//! # Layout
//!
//! A [`Shape`] (`shape.rs`) says what traffic looks like: weighted event types,
//! Zipf-skewed pages and users, the share of late, out-of-order and malformed
//! records, the ranges of the integer properties. A [`Generator`]
//! (`generator.rs`) turns a shape and a seed into a deterministic stream of
//! [`Generated`] Kafka records, each written as the JSON of the event format
//! (docs/ARCHITECTURE.md) and flagged `valid` or not; the malformed ones
//! (`malformed.rs`) come in every kind the platform rejects. `json.rs` is the
//! small allocation-free writer the generator uses, `rng.rs` its seeded
//! random source. [`produce`] (`produce.rs`) sends a generator's records to
//! Kafka at a target rate, for a duration or a count, showing each record to
//! an observer (so a test can fold exactly what was produced) and stopping on
//! a cancellation token.
//!
//! `tally gen`, the tests and the benchmarks all use this one generator.

mod generator;
mod json;
mod malformed;
mod produce;
mod rng;
mod shape;

pub use generator::{Generated, Generator};
pub use malformed::MalformedKind;
pub use produce::{produce, ProduceError, ProduceOptions, ProduceReport};
pub use rng::Rng;
pub use shape::{IntRange, Shape, ShapeError, Weighted};
