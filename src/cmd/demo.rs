//! `tally demo`: the platform with load flowing, for a first look.
//!
//! Creates the topics if the broker lacks them, runs every role in this
//! process (as `tally run` does), produces synthetic traffic with `tally-gen`
//! (late, out-of-order and a few malformed events included), runs a first
//! batch once the archiver has published a cut, so that the dashboard shows
//! both layers, and prints the dashboard's address. `infra/demo` starts the
//! services and runs this with `infra/demo.toml` (one-minute epochs, so the
//! cut moves while you watch).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use tally_batch::{BatchError, RunOptions};
use tally_core::config::Config;
use tally_gen::{produce, Generator, ProduceOptions, Shape};
use tokio_util::sync::CancellationToken;

/// Options of `tally demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Events per second of synthetic traffic.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Partitions of each topic the demo creates.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Seconds after the start to try the first batch run (retried every
    /// 15 s until the archiver has published a cut).
    #[arg(long, default_value_t = 75)]
    pub first_batch_after: u64,
}

pub async fn run(cfg: Config, args: DemoArgs) -> anyhow::Result<()> {
    let shutdown = crate::shutdown::on_signal();
    let metrics = crate::telemetry::install(None)?;
    let store = crate::cmd::open_store(&cfg)?;
    let mut topics = cfg.kafka.topics.clone();
    topics.push(cfg.kafka.dead_letter_topic.clone());
    ensure_topics(&cfg.kafka.brokers, &topics, args.partitions).await?;
    let cfg = Arc::new(cfg);

    let roles = tokio::spawn(crate::cmd::run::run_roles(
        cfg.clone(),
        store.clone(),
        metrics,
        shutdown.child_token(),
    ));
    let load = tokio::spawn(traffic(cfg.clone(), args.rate, shutdown.child_token()));
    let first = tokio::spawn(first_batch(
        cfg.clone(),
        store,
        Duration::from_secs(args.first_batch_after),
        shutdown.child_token(),
    ));
    println!(
        "tally demo: {} events/s into `{}`; dashboard at http://{}/ (the first batch run follows in about {} s); Ctrl-C stops",
        args.rate, cfg.kafka.topics[0], cfg.serve.listen, args.first_batch_after
    );

    let result = roles.await.context("the roles' task")?;
    shutdown.cancel();
    let _ = first.await;
    match load.await {
        Ok(Err(e)) => tracing::warn!(error = format!("{e:#}"), "traffic generator stopped"),
        Err(e) => tracing::warn!(error = %e, "traffic generator task failed"),
        Ok(Ok(())) => {}
    }
    result
}

/// Create the topics the broker does not have yet.
async fn ensure_topics(brokers: &str, topics: &[String], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("Kafka admin client")?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .with_context(|| format!("create topics {topics:?} on {brokers}"))?;
    for r in results {
        match r {
            Ok(t) => tracing::info!(topic = %t, partitions, "topic created"),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::info!(topic = %t, "topic exists")
            }
            Err((t, e)) => anyhow::bail!("create topic `{t}` on {brokers}: {e}"),
        }
    }
    Ok(())
}

/// Synthetic traffic until `stop`, with the default shape under the config's limits.
async fn traffic(cfg: Arc<Config>, rate: f64, stop: CancellationToken) -> anyhow::Result<()> {
    let shape = Shape::default()
        .with_limits(cfg.events.limits())
        .clamped_to_limits();
    let seed = shape.seed;
    let mut generator = Generator::new(shape, seed)?;
    let options = ProduceOptions::new(&cfg.kafka.topics[0], rate);
    let report = produce(&cfg.kafka, &mut generator, &options, None, &stop).await?;
    tracing::info!(
        sent = report.sent,
        delivered = report.delivered,
        "traffic stopped"
    );
    Ok(())
}

/// The first batch run, once a cut exists, so that both layers show.
async fn first_batch(
    cfg: Arc<Config>,
    store: Arc<dyn object_store::ObjectStore>,
    after: Duration,
    stop: CancellationToken,
) {
    let mut wait = after;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match tally_batch::run_locked(&cfg, store.clone(), RunOptions::default(), &|_| {}).await {
            Ok(s) if s.cut.is_some() && s.rows_read > 0 => {
                println!(
                    "tally demo: first batch run published ({} rows from {} files, cut epoch {}); the dashboard now merges both layers",
                    s.rows_read,
                    s.files_read,
                    s.cut.unwrap_or_default()
                );
                return;
            }
            Ok(_) => tracing::info!(
                "first batch run: nothing archived below the cut yet; retrying in 15 s"
            ),
            Err(BatchError::Locked { .. }) => {
                tracing::info!("first batch run: another run holds the lock; retrying")
            }
            Err(e) => tracing::warn!(error = %e, "first batch run failed; retrying in 15 s"),
        }
        wait = Duration::from_secs(15);
    }
}
