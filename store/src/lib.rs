//! # tally-store: the object store and everything Tally keeps in it
//!
//! Every role opens its store and reads or writes a stored object through
//! this crate, so each format has one writer and one reader and every layer
//! reads it with the same tolerance. It knows the formats, not the
//! protocols: when the archiver may move its progress or the cut, and how a
//! batch run plans its files, are the batch layer's.
//!
//! ## Layout
//!
//! - [`open()`]: the store named in the config (`file://`, `memory://`, `s3://`).
//! - [`object`]: JSON objects, conditional puts, listing, deletion.
//! - [`paths`]: every object path.
//! - [`manifest`]: a view's published snapshot (versioned JSON).
//! - [`cut`] and [`progress`]: the archiver's cut and per-partition progress.
//! - [`snapshot`]: the snapshot file schema, its writer and its reader.
//! - [`lookup`]: a lookup table's file (CSV or Parquet, two columns), read
//!   for the serving layer's query-time lookups.
//!
//! The master dataset's archive files are the batch layer's alone (written
//! by its archiver, read by its runs): their format lives there.

pub mod cut;
pub mod lookup;
pub mod manifest;
pub mod object;
mod open;
pub mod paths;
pub mod progress;
pub mod snapshot;

pub use object::{StoreError, Version, Written};
pub use open::open;
