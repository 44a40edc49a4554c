//! What a batch run reports to Prometheus, so that an operator sees runs,
//! failures, rows and the time of the last success of each view without
//! reading logs (alerts in `docs/OPERATIONS.md`).
//!
//! Recorded once per locked run (`schedule::run_locked`: the schedule,
//! `tally recompute`, the API's recompute hook), refused ones included: `tally_batch_runs_total{outcome}`,
//! `tally_batch_run_seconds`, `tally_batch_rows_read_total`,
//! `tally_batch_rows_written_total{view}` and
//! `tally_batch_last_success_seconds{view}` (Unix time),
//! `tally_batch_skipped_files` (archive files the last finished run left out
//! as unreadable) and `tally_batch_corrupt_manifests_total{view}` (manifests
//! found unreadable and recomputed over). A run that lost its lock counts as
//! `outcome="lock_lost"`.

use crate::recompute::{BatchError, RunSummary};

pub(crate) fn run(result: &Result<RunSummary, BatchError>, seconds: f64) {
    metrics::histogram!("tally_batch_run_seconds").record(seconds);
    let outcome = match result {
        Ok(_) => "succeeded",
        Err(BatchError::Locked { .. }) => "locked",
        Err(BatchError::LockLost { .. }) => "lock_lost",
        Err(_) => "failed",
    };
    metrics::counter!("tally_batch_runs_total", "outcome" => outcome).increment(1);
    let Ok(summary) = result else { return };
    metrics::counter!("tally_batch_rows_read_total").increment(summary.rows_read);
    metrics::gauge!("tally_batch_skipped_files").set(summary.skipped.len() as f64);
    let now_s = tally_core::time::now_ms() as f64 / 1000.0;
    for v in &summary.views {
        metrics::counter!("tally_batch_rows_written_total", "view" => v.view.clone())
            .increment(v.rows_written);
        metrics::gauge!("tally_batch_last_success_seconds", "view" => v.view.clone()).set(now_s);
        if v.corrupt_manifest.is_some() {
            metrics::counter!("tally_batch_corrupt_manifests_total", "view" => v.view.clone())
                .increment(1);
        }
    }
}
