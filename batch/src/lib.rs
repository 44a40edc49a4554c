//! # tally-batch: the master dataset and the accurate views
//!
//! The batch layer keeps every Kafka record in an immutable master dataset
//! (Parquet files in an object store, the views' properties as plain
//! columns) and recomputes the views from it with Polars lazy plans on the
//! streaming engine, publishing each view's snapshot, at every roll-up
//! level, atomically through a manifest.
//!
//! ## Layout
//!
//! - [`archive_file`]: the archive file format (typed envelope, promoted
//!   property columns, typed properties, raw bytes) and its writer.
//! - [`promote`]: which properties a file promotes to columns, and how the
//!   footer lists them.
//! - [`archive`]: the archiver, a consumer-group member: Kafka to archive
//!   files, exactly once by coordinates.
//! - [`progress`]: the archiver's shared objects: each partition's progress,
//!   fenced by a claim, and the cut, computed over every partition and
//!   published only forward.
//! - `recompute`: a batch run (incremental by files, or full): inputs and
//!   their overlaps, fetching, the Polars plan, `distinct` sketches, groups
//!   and roll-ups, snapshots, publishing and garbage collection;
//!   `recompute` for an ad-hoc range.
//! - [`lock`]: the lock object that keeps runs from overlapping.
//! - `schedule`: locked runs, and the cron schedule.
//!
//! Entry points for the `tally` binary: [`archive::run`], [`run_batch`],
//! [`run_locked`], [`recompute()`] and [`schedule()`]. What is stored (paths, manifests,
//! the cut and progress objects, snapshot files) and opening the store are
//! `tally-store`'s; this crate holds the protocols over them.
//!
//! Public beyond the entry points, for the archive and fence tests that
//! drive them directly: [`archive_file`] (write and read archive files),
//! [`promote`], [`progress`] (claims, the fence, the cut) and [`lock`].
//! The batch run itself is private and tested through [`run_batch`],
//! [`run_locked`] and [`recompute()`].

pub mod archive;
pub mod archive_file;
pub mod lock;
pub mod progress;
pub mod promote;
mod recompute;
mod report;
mod schedule;

pub use recompute::{
    recompute, run_batch, run_batch_with, BatchError, Progress, RunOptions, RunSummary, ViewSummary,
};
pub use schedule::{run_locked, schedule, ScheduleError};
