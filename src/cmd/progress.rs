//! The operator's view of a batch run: an indicatif progress bar fed by the
//! batch layer's [`Progress`] events, and the closing summary.
//!
//! The bar draws to stderr only when it is a terminal (indicatif hides itself
//! otherwise), so scripted runs print just the summary.

use indicatif::{ProgressBar, ProgressStyle};
use tally_batch::{Progress, RunSummary};

/// A bar over the archive files every planned view will read.
#[derive(Debug)]
pub(crate) struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub(crate) fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix:>14} [{bar:30}] {pos}/{len} files {msg} ({elapsed})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Bar { bar }
    }

    /// Account for one progress event.
    pub(crate) fn on(&self, p: Progress) {
        match p {
            Progress::Planned { view, files, days } => {
                self.bar.set_prefix(view);
                self.bar.inc_length(files as u64);
                self.bar.set_message(format!("{days} days"));
            }
            Progress::FileRead { .. } => self.bar.inc(1),
            Progress::DayWritten { day, .. } => self.bar.set_message(format!("day {day} written")),
            Progress::Published { view } => self.bar.println(format!("{view}: published")),
        }
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Print what a run did: files, rows read, seconds, rows/s, and per view.
pub(crate) fn print_summary(s: &RunSummary) {
    let Some(cut) = s.cut else {
        println!("nothing to do: no cut published yet (is `tally archive` running?)");
        return;
    };
    println!(
        "run {}: cut epoch {}, {} files, {} rows read in {:.2} s ({:.0} rows/s)",
        s.run_id,
        cut,
        s.files_read,
        s.rows_read,
        s.seconds,
        s.rows_per_second()
    );
    for v in &s.views {
        println!(
            "  {}: {} days recomputed{}, {} carried forward, {} files, {} rows read, {} rows written",
            v.view,
            v.days_recomputed,
            if v.full { " (full)" } else { "" },
            v.days_carried,
            v.files_read,
            v.rows_read,
            v.rows_written
        );
        if let Some(copy) = &v.corrupt_manifest {
            println!("    its manifest was unreadable: recomputed in full; the old one is kept at {copy}");
        }
    }
    if !s.skipped.is_empty() {
        println!(
            "{} archive files could not be read and were left out (their records are missing from the snapshots):",
            s.skipped.len()
        );
        for f in &s.skipped {
            println!("  {} ({} bytes): {}", f.path, f.size, f.reason);
        }
    }
}
