//! Scheduled and locked batch runs.
//!
//! [`run_locked`] is what every trigger calls (cron, `tally batch run`, the
//! admin API): take the batch lock, run, garbage-collect superseded snapshot
//! runs, release. [`schedule`] runs it on the configured cron expression (UTC,
//! with seconds; nightly at 02:00 by default) with tokio-cron-scheduler until
//! shutdown. Runs never overlap: a trigger that finds the lock held is skipped
//! and logged, and a run renews the lock while it works; one that finds it
//! taken over (it stalled past `batch.lock_ttl`) publishes nothing more and
//! fails with [`BatchError::LockLost`].

use std::future::Future;
use std::sync::Arc;

use object_store::ObjectStore;
use tally_core::config::Config;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::lock::{self, Acquired};
use crate::recompute::{gc_view, run_leased, BatchError, Progress, RunOptions, RunSummary};

/// Errors of the scheduler itself (a failed run is logged, not returned).
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("batch.schedule `{expr}`: {source}")]
    Cron {
        expr: String,
        source: JobSchedulerError,
    },
    #[error("scheduler: {0}")]
    Scheduler(#[from] JobSchedulerError),
}

/// Take the lock, run the batch, collect garbage, release the lock.
pub async fn run_locked(
    cfg: &Config,
    store: Arc<dyn ObjectStore>,
    opts: RunOptions,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<RunSummary, BatchError> {
    let started = std::time::Instant::now();
    let result = run_under_lock(cfg, store, opts, progress).await;
    crate::report::run(&result, started.elapsed().as_secs_f64());
    result
}

async fn run_under_lock(
    cfg: &Config,
    store: Arc<dyn ObjectStore>,
    opts: RunOptions,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<RunSummary, BatchError> {
    let now = chrono::Utc::now().timestamp_millis();
    let owner = format!("{}-{}", std::process::id(), crate::recompute::new_run_id());
    let held = match lock::acquire(&store, &owner, cfg.batch.lock_ttl.0, now).await? {
        Acquired::Held(l) => Arc::new(l),
        Acquired::Busy(f) => {
            return Err(BatchError::Locked {
                owner: f.owner,
                until_ms: f.until_ms,
            })
        }
    };
    let heartbeat = held.heartbeat();
    let result = run_leased(cfg, store.clone(), opts, progress, Some(&held)).await;
    heartbeat.abort();
    // Collect garbage only while still holding the lock: a run that lost it
    // must not delete files the new holder's manifests may refer to.
    let collect = match &result {
        Ok(_) => match held.confirm().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "published, but lost the batch lock before garbage collection; skipped");
                false
            }
        },
        Err(_) => false,
    };
    if collect {
        let now = chrono::Utc::now().timestamp_millis();
        for v in &cfg.views {
            if let Err(e) = gc_view(&store, &v.name, cfg.batch.gc_grace.0, now).await {
                tracing::warn!(view = %v.name, error = %e, "snapshot garbage collection failed");
            }
        }
    }
    if let Err(e) = held.release().await {
        tracing::warn!(error = %e, "could not release the batch lock; it will expire");
    }
    result
}

/// Run the batch on `cfg.batch.schedule` until `shutdown` resolves.
pub async fn schedule(
    cfg: Config,
    store: Arc<dyn ObjectStore>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ScheduleError> {
    let expr = cfg.batch.schedule.clone();
    let cfg = Arc::new(cfg);
    let mut sched = JobScheduler::new().await?;
    let job = Job::new_async(expr.as_str(), move |_id, _l| {
        let cfg = cfg.clone();
        let store = store.clone();
        Box::pin(async move {
            match run_locked(&cfg, store, RunOptions::default(), &|_| {}).await {
                Ok(s) => tracing::info!(
                    run_id = %s.run_id, cut = ?s.cut, rows = s.rows_read,
                    seconds = s.seconds, "scheduled batch run done"
                ),
                Err(BatchError::Locked { owner, .. }) => {
                    tracing::info!(%owner, "scheduled batch run skipped: another run holds the lock")
                }
                Err(e) => tracing::error!(error = %e, "scheduled batch run failed"),
            }
        })
    })
    .map_err(|source| ScheduleError::Cron {
        expr: expr.clone(),
        source,
    })?;
    sched.add(job).await?;
    sched.start().await?;
    shutdown.await;
    sched.shutdown().await?;
    Ok(())
}
