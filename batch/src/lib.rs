//! # tally-batch: the master dataset and the accurate views
//!
//! The batch layer keeps every Kafka record in an immutable master dataset
//! (Parquet files in an object store) and recomputes the views from it with a
//! streaming fold over those files, publishing each view's snapshot
//! atomically through a manifest.
//!
//! ## Layout
//!
//! - [`store`]: opening `file://`, `memory://` or `s3://` stores; JSON objects
//!   and conditional puts.
//! - [`archive_file`]: the archive file format (typed envelope, typed
//!   properties, raw bytes) and its writer and reader.
//! - [`archive`]: the archiver, a consumer-group member: Kafka to archive
//!   files, exactly once by coordinates.
//! - [`progress`]: the archiver's shared objects: each partition's progress,
//!   fenced by a claim, and the cut, computed over every partition and
//!   published only forward.
//! - [`recompute`]: a batch run (incremental by files, or full), snapshots,
//!   manifests and garbage collection; `recompute` for an ad-hoc range.
//! - [`lock`]: the lock object that keeps runs from overlapping.
//! - [`schedule`]: locked runs, and the cron schedule.
//!
//! Entry points for the `tally` binary: [`archive::run`], [`run_batch`],
//! [`run_locked`], [`recompute()`], [`schedule()`] and [`store::open`].

pub mod archive;
pub mod archive_file;
pub mod lock;
pub mod progress;
pub mod recompute;
mod report;
pub mod schedule;
pub mod store;

pub use recompute::{
    recompute, run_batch, run_batch_with, BatchError, Progress, RunOptions, RunSummary, ViewSummary,
};
pub use schedule::{run_locked, schedule, ScheduleError};
