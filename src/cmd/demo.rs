//! `tally demo`: the platform with load flowing, for a first look.
//!
//! Creates the topics if the broker lacks them; when it created them (a first
//! run), backfills a day of history: `--backfill-events` events from
//! `tally-gen` with event times over the past `--backfill` (more by day than
//! by night), produced at once through the real pipeline (Kafka, the speed
//! layer, the archive, then the first batch run), so that the dashboard shows
//! the shape of real traffic from the first minute. Then runs every role in
//! this process (as `tally run` does), produces live synthetic traffic (late,
//! out-of-order and a few malformed events included), runs a first batch once
//! the archiver has published a cut, so that the dashboard shows both
//! layers, and prints the dashboard's address. `infra/demo` starts the
//! services and runs this with `infra/demo.toml` (one-minute epochs, so the
//! cut moves while you watch).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tally_batch::{BatchError, RunOptions};
use tally_core::config::Config;
use tally_gen::{produce, Generator, ProduceOptions, Shape};
use tokio_util::sync::CancellationToken;

/// Options of `tally demo`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DemoArgs {
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
    /// How far back the history backfilled on a first run reaches (0s: none).
    #[arg(long, default_value = "24h", value_parser = parse_span)]
    pub backfill: Duration,
    /// Events in that history.
    #[arg(long, default_value_t = 400_000)]
    pub backfill_events: u64,
}

fn parse_span(s: &str) -> Result<Duration, String> {
    tally_core::time::parse_duration_ms(s)
        .filter(|ms| *ms >= 0)
        .map(|ms| Duration::from_millis(ms as u64))
        .ok_or_else(|| format!("`{s}` is not a duration: use e.g. 24h, 90m or 0s"))
}

pub(crate) async fn run(cfg: Config, args: DemoArgs) -> anyhow::Result<()> {
    let shutdown = crate::shutdown::on_signal();
    let metrics = crate::telemetry::install(None)?;
    let store = crate::cmd::open_store(&cfg)?;
    let mut topics = cfg.kafka.topics.clone();
    topics.push(cfg.kafka.dead_letter_topic.clone());
    let created = ensure_topics(&cfg.kafka.brokers, &topics, args.partitions).await?;
    // Only into a new topic: a second run would count the history twice.
    if created && !args.backfill.is_zero() && args.backfill_events > 0 {
        let started = std::time::Instant::now();
        let n = backfill(&cfg, args.backfill, args.backfill_events).await?;
        println!(
            "tally demo: backfilled {n} events over the past {} in {:.1} s",
            tally_core::time::format_ms(args.backfill.as_millis() as i64),
            started.elapsed().as_secs_f64()
        );
    }
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

/// Create the topics the broker does not have yet; true when it created the
/// first one (the events topic), i.e. on a first run.
async fn ensure_topics(brokers: &str, topics: &[String], partitions: i32) -> anyhow::Result<bool> {
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
    let mut created_first = false;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(t) => {
                tracing::info!(topic = %t, partitions, "topic created");
                created_first |= i == 0;
            }
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::info!(topic = %t, "topic exists")
            }
            Err((t, e)) => anyhow::bail!("create topic `{t}` on {brokers}: {e}"),
        }
    }
    Ok(created_first)
}

/// A day (`span`) of history: `events` generated events whose event times
/// follow a daily rhythm over the past `span`, sent now (so they are late
/// events of the current ingest epoch: the speed layer counts them at once,
/// the first batch run after the cut moves past them).
async fn backfill(cfg: &Config, span: Duration, events: u64) -> anyhow::Result<u64> {
    let shape = Shape::default()
        .with_limits(cfg.events.limits())
        .clamped_to_limits();
    let seed = shape.seed.wrapping_add(1);
    let mut generator = Generator::new(shape, seed)?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "none")
        .create()
        .context("Kafka producer for the backfill")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let span_ms = span.as_millis() as f64;
    let topic = &cfg.kafka.topics[0];
    for i in 0..events {
        // More events in the afternoon (UTC) than at night: invert a
        // cumulative density 1 + 0.6 sin over the day, by bisection.
        let u = (i as f64 + 0.5) / events as f64;
        let t = now - span_ms as i64 + (rhythm_inverse(u) * span_ms) as i64;
        let g = generator.next(t);
        let mut record = BaseRecord::to(topic)
            .key(g.key.as_slice())
            .payload(g.payload.as_slice())
            .timestamp(now);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e).context("send a backfill event"),
            }
        }
    }
    tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(60)))
        .await?
        .context("flush the backfill")?;
    Ok(events)
}

/// The share `x` of the day at which a fraction `u` of the day's events
/// have happened, for a density `1 + 0.6 sin(2π(x - 0.35))`.
fn rhythm_inverse(u: f64) -> f64 {
    use std::f64::consts::TAU;
    let cdf = |x: f64| x + 0.6 / TAU * ((TAU * 0.35).cos() - (TAU * (x - 0.35)).cos());
    let (mut lo, mut hi) = (0.0, 1.0);
    for _ in 0..40 {
        let mid = (lo + hi) / 2.0;
        if cdf(mid) < u {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
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
