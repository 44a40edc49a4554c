//! `tally run`: every role in one process (speed, archive, the batch
//! scheduler and serving) under one config. Each role is supervised on its
//! own ([`crate::supervise`]): one that fails is restarted with backoff while
//! the others go on, so the API keeps answering (saying what is degraded)
//! when Redis, the broker or the store is away. One SIGTERM stops them all:
//! each role gets a child of the process's cancellation token and flushes
//! what it holds.

use std::future::Future;
use std::sync::Arc;

use anyhow::anyhow;
use tally_core::config::Config;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cmd::{archive, batch, serve, speed};
use crate::supervise::{supervise, Roles};

pub(crate) async fn run(cfg: Config) -> anyhow::Result<()> {
    let shutdown = crate::shutdown::on_signal();
    let metrics = crate::telemetry::install(None)?;
    let store = crate::cmd::open_store(&cfg)?;
    run_roles(Arc::new(cfg), store, metrics, shutdown).await
}

/// Run the four roles, each restarted when it fails, until `shutdown`.
pub(crate) async fn run_roles(
    cfg: Arc<Config>,
    store: Arc<dyn object_store::ObjectStore>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let roles = Roles::default();
    let mut tasks = JoinSet::new();
    let (c, s) = (cfg.clone(), store.clone());
    spawn_role(&mut tasks, "speed", &roles, &shutdown, move |t| {
        speed::role(c.clone(), s.clone(), t)
    });
    let (c, s) = (cfg.clone(), store.clone());
    spawn_role(&mut tasks, "archive", &roles, &shutdown, move |t| {
        archive::role(c.clone(), s.clone(), t)
    });
    let (c, s) = (cfg.clone(), store.clone());
    spawn_role(&mut tasks, "batch scheduler", &roles, &shutdown, move |t| {
        batch::schedule_role(c.clone(), s.clone(), t)
    });
    let (c, s) = (cfg.clone(), store.clone());
    let supervised = roles.clone();
    let probe: tally_serving::RolesProbe = Arc::new(move || {
        let roles = supervised.snapshot().into_iter();
        roles.map(|(name, s)| (name.to_owned(), s.up)).collect()
    });
    spawn_role(&mut tasks, "serve", &roles, &shutdown, move |t| {
        serve::role(
            c.clone(),
            s.clone(),
            metrics.clone(),
            Some(probe.clone()),
            t,
        )
    });

    // Supervised roles end only at shutdown, each with its last run's result.
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (name, result) = done.unwrap_or_else(|e| ("a role", Err(anyhow!("panicked: {e}"))));
        match result {
            Ok(()) => tracing::info!(role = name, "stopped"),
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{}", failures.join("; ")))
    }
}

type Tasks = JoinSet<(&'static str, anyhow::Result<()>)>;

/// Start one supervised role on `tasks`.
fn spawn_role<F, Fut>(
    tasks: &mut Tasks,
    name: &'static str,
    roles: &Roles,
    shutdown: &CancellationToken,
    start: F,
) where
    F: FnMut(CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (roles, shutdown) = (roles.clone(), shutdown.clone());
    tasks.spawn(async move { (name, supervise(name, roles, shutdown, start).await) });
}
