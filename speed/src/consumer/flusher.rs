//! The flusher: chunks from the consume thread applied to Redis, one script
//! call per partition group each, and what happened sent back.
//!
//! Each group's part of a chunk is applied all or nothing (the script checks
//! before it writes), so a failed call can always be retried: transient
//! errors are, with backoff, for the groups that did not answer yet. An error that would fail the same way forever (a value in Redis
//! that Tally did not write) stops the layer; nothing of that chunk was
//! applied, so a restart resumes exactly.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc as tmpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use tally_core::time::now_ms;

use super::{Feedback, SpeedSummary};
use crate::apply::{is_transient, Applier, Outcome, Progress};
use crate::delta::{Chunk, Folder};
use crate::error::SpeedError;

/// How long to keep retrying unflushed chunks once shutdown is asked.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(10);

/// Apply chunks until the consume thread closes the queue, or an error that
/// would repeat stops it (the queue is closed on return either way).
pub(super) async fn run(
    mut applier: Applier,
    folder: &Folder,
    mut chunks: tmpsc::Receiver<Chunk>,
    feedback: &mpsc::Sender<Feedback>,
    shutdown: &CancellationToken,
) -> Result<SpeedSummary, SpeedError> {
    let mut summary = SpeedSummary::default();
    let mut backoff = Duration::from_millis(50);
    while let Some(chunk) = chunks.recv().await {
        let started = Instant::now();
        // Groups applied before an error are not sent again on the retry.
        let mut progress = Progress::default();
        loop {
            match applier
                .apply_resuming(&chunk, folder, now_ms(), &mut progress)
                .await
            {
                Ok(outcome) => {
                    metrics::histogram!("tally_speed_flush_seconds")
                        .record(started.elapsed().as_secs_f64());
                    report(feedback, chunk, outcome, &mut summary);
                    backoff = Duration::from_millis(50);
                    break;
                }
                Err(e) if !is_transient(&e) => {
                    error!(error = %e, "applying to Redis failed and would fail again; stopping");
                    metrics::counter!("tally_speed_flush_errors_total", "kind" => "permanent")
                        .increment(1);
                    return Err(e);
                }
                Err(e) => {
                    // Nothing was applied: retrying is safe, fencing sorts out the rest.
                    warn!(error = %e, "applying to Redis failed; retrying");
                    metrics::counter!("tally_speed_flush_errors_total", "kind" => "transient")
                        .increment(1);
                    if shutdown.is_cancelled() && started.elapsed() > SHUTDOWN_PATIENCE {
                        warn!("giving up on unflushed chunks at shutdown; they will be re-read from Kafka");
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
    Ok(summary)
}

/// Count the outcome and tell the consume thread.
fn report(tx: &mpsc::Sender<Feedback>, c: Chunk, o: Outcome, summary: &mut SpeedSummary) {
    let fb = match o {
        Outcome::Applied => {
            metrics::counter!("tally_speed_events_total").increment(c.events);
            summary.events += c.events;
            summary.chunks += 1;
            Feedback::Applied { ranges: c.ranges }
        }
        Outcome::Failed { stored } => {
            metrics::counter!("tally_speed_fenced_chunks_total").increment(1);
            summary.fenced += 1;
            if c.ranges
                .iter()
                .zip(&stored)
                .any(|(r, s)| s.is_none() && !r.fresh)
            {
                metrics::counter!("tally_speed_resets_total").increment(1);
            }
            debug!(ranges = ?c.ranges, ?stored, "chunk fenced");
            Feedback::Failed {
                generation: c.generation,
                ranges: c.ranges.into_iter().zip(stored).collect(),
            }
        }
    };
    let _ = tx.send(fb);
}
