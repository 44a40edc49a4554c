//! Roles that outlive their dependencies.
//!
//! A role (speed, archive, batch scheduler, serve) that fails, because the
//! broker, Redis or the object store is away or for any other reason, is
//! started again after a backoff (1 s doubling to 60 s, reset after a minute
//! of running), while the other roles of the process go on. Every failure is
//! logged with its cause, counted (`tally_role_restarts_total{role}`) and
//! shown in [`Roles`] (`tally_role_up{role}` and, through the serving layer,
//! `/readyz`), so an operator sees a role that keeps failing instead of a
//! process that vanished. Only shutdown ends a supervised role.
//!
//! Restarting is safe because every role resumes from durable state: the
//! speed layer from the offsets fenced in Redis, the archiver from its
//! progress objects, the batch from its manifests.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How long to wait before a restart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    /// The first wait; it doubles up to `max`.
    pub first: Duration,
    pub max: Duration,
    /// A role that ran this long before failing starts again at `first`.
    pub healthy_run: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
            healthy_run: Duration::from_secs(60),
        }
    }
}

/// What is known of one role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RoleState {
    /// Running now (not waiting to be restarted).
    pub up: bool,
    /// Failures so far.
    pub restarts: u64,
    /// The last failure, with its cause chain.
    pub last_error: Option<String>,
}

/// The states of a process's roles, shared with whoever reports them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Roles(Arc<Mutex<BTreeMap<&'static str, RoleState>>>);

impl Roles {
    /// A copy of every role's state, by name.
    pub(crate) fn snapshot(&self) -> BTreeMap<&'static str, RoleState> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, RoleState>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, name: &'static str, f: impl FnOnce(&mut RoleState)) {
        let mut roles = self.lock();
        let state = roles.entry(name).or_default();
        f(state);
        metrics::gauge!("tally_role_up", "role" => name).set(if state.up { 1.0 } else { 0.0 });
    }
}

/// Run the role `start` makes until `shutdown`, restarting it with backoff
/// whenever it fails or stops on its own. Each run gets a child token of
/// `shutdown`. Returns the last run's result once `shutdown` is cancelled.
pub(crate) async fn supervise<F, Fut>(
    name: &'static str,
    roles: Roles,
    shutdown: CancellationToken,
    start: F,
) -> anyhow::Result<()>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    supervise_with(Backoff::default(), name, roles, shutdown, start).await
}

/// [`supervise`] with its own [`Backoff`].
pub(crate) async fn supervise_with<F, Fut>(
    waits: Backoff,
    name: &'static str,
    roles: Roles,
    shutdown: CancellationToken,
    mut start: F,
) -> anyhow::Result<()>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = waits.first;
    loop {
        roles.update(name, |s| s.up = true);
        let started = Instant::now();
        let result = start(shutdown.child_token()).await;
        if shutdown.is_cancelled() {
            roles.update(name, |s| s.up = false);
            return result;
        }
        let error = match result {
            Ok(()) => "stopped on its own".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if started.elapsed() >= waits.healthy_run {
            backoff = waits.first;
        }
        tracing::error!(role = name, %error, retry_in = ?backoff, "role failed; restarting it");
        metrics::counter!("tally_role_restarts_total", "role" => name).increment(1);
        roles.update(name, |s| {
            s.up = false;
            s.restarts += 1;
            s.last_error = Some(error);
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(waits.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Backoff = Backoff {
        first: Duration::from_millis(20),
        max: Duration::from_millis(80),
        healthy_run: Duration::from_secs(60),
    };

    #[tokio::test]
    async fn a_failing_role_is_restarted_with_growing_waits_until_shutdown() {
        let roles = Roles::default();
        let shutdown = CancellationToken::new();
        let starts = Arc::new(Mutex::new(Vec::<Instant>::new()));
        let task = {
            let (roles, shutdown, starts) = (roles.clone(), shutdown.clone(), starts.clone());
            tokio::spawn(supervise_with(QUICK, "speed", roles, shutdown, move |_| {
                let starts = starts.clone();
                async move {
                    starts.lock().unwrap().push(Instant::now());
                    anyhow::bail!("redis: connection refused")
                }
            }))
        };
        while starts.lock().unwrap().len() < 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shutdown.cancel();
        task.await.unwrap().unwrap();
        let starts = starts.lock().unwrap().clone();
        // Waits of at least 20, 40, 80 and 80 ms (the cap) between the runs.
        for (gap, least) in starts.windows(2).zip([20, 40, 80, 80]) {
            assert!(
                gap[1] - gap[0] >= Duration::from_millis(least),
                "{:?}",
                gap[1] - gap[0]
            );
        }
        let state = roles.snapshot()["speed"].clone();
        assert!(!state.up);
        assert!(state.restarts >= 5);
        assert_eq!(
            state.last_error.as_deref(),
            Some("redis: connection refused")
        );
    }

    #[tokio::test]
    async fn a_role_that_runs_is_up_and_shutdown_ends_it() {
        let roles = Roles::default();
        let shutdown = CancellationToken::new();
        let task = {
            let (roles, shutdown) = (roles.clone(), shutdown.clone());
            tokio::spawn(supervise("serve", roles, shutdown, |stop| async move {
                stop.cancelled().await;
                Ok(())
            }))
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(roles.snapshot()["serve"].up);
        shutdown.cancel();
        task.await.unwrap().unwrap();
        assert!(!roles.snapshot()["serve"].up);
    }
}
