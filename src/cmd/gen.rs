//! `tally gen`: synthetic events to Kafka at a target rate, with late,
//! out-of-order and malformed records, until a duration or count is reached
//! or the process is told to stop. The generator is `tally-gen`'s, the same
//! one the tests and benchmarks fold their truth from.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tally_core::config::{Config, Millis};
use tally_gen::{produce, Generator, ProduceOptions, Shape};
use tokio_util::sync::CancellationToken;

/// Options of `tally gen`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct GenArgs {
    /// Target events per second (0: as fast as possible).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Stop after this long (`30s`, `5m`, `1h`); runs until stopped without it or --count.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Topic to produce to (default: the first of `[kafka] topics`).
    #[arg(long)]
    pub topic: Option<String>,
    /// Share of late events, stamped up to the shape's `max_late` before
    /// their Kafka timestamp (0.0 to 1.0).
    #[arg(long)]
    pub late_share: Option<f64>,
    /// Share of malformed records, of every kind the platform rejects (0.0 to 1.0).
    #[arg(long)]
    pub malformed_share: Option<f64>,
    /// Share of records that are a producer's retry of a recent event (same
    /// event_id), for views with `dedup = "event_id"` (0.0 to 1.0).
    #[arg(long)]
    pub retry_share: Option<f64>,
    /// Seed of the generator (default: the shape's seed); the same seed gives the same events.
    #[arg(long)]
    pub seed: Option<u64>,
    /// A TOML file with the traffic shape (see `tally_gen::Shape`; every field optional).
    #[arg(long)]
    pub shape: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tally_core::time::parse_duration_ms(s)
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms as u64))
        .ok_or_else(|| {
            format!("`{s}` is not a duration: use a number and a unit, like 30s, 5m, 1h")
        })
}

/// Build the shape: the file (or defaults), then the command-line overrides,
/// judged against the config's `[events]` limits. Without a shape file, late
/// events are only as late as the config accepts.
fn shape(cfg: &Config, args: &GenArgs) -> anyhow::Result<Shape> {
    let mut shape = match &args.shape {
        Some(path) => Shape::from_toml_file(path)?,
        None => Shape::default(),
    }
    .with_limits(cfg.events.limits());
    if args.shape.is_none() {
        shape = shape.clamped_to_limits();
    }
    if let Some(s) = args.late_share {
        shape.late_share = s;
    }
    if let Some(s) = args.malformed_share {
        shape.malformed_share = s;
    }
    if let Some(s) = args.retry_share {
        shape.retry_share = s;
    }
    if let Some(s) = args.seed {
        shape.seed = s;
    }
    shape.check()?;
    Ok(shape)
}

pub(crate) async fn run(
    cfg: Config,
    args: GenArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shape = shape(&cfg, &args)?;
    let topic = match &args.topic {
        Some(t) => t.clone(),
        None => cfg
            .kafka
            .topics
            .first()
            .cloned()
            .context("no topic: pass --topic or set [kafka] topics")?,
    };
    let seed = shape.seed;
    let late = shape.late_share;
    let max_late = String::from(Millis(shape.max_late.0));
    let malformed = shape.malformed_share;
    let mut generator = Generator::new(shape, seed)?;
    let mut options = ProduceOptions::new(&topic, args.rate);
    options.duration = args.duration;
    options.count = args.count;
    eprintln!(
        "producing to `{topic}` on {} at {} events/s (seed {seed}, late {late} up to {max_late}, malformed {malformed})",
        cfg.kafka.brokers,
        if args.rate > 0.0 { format!("{}", args.rate) } else { "max".into() },
    );
    let report = produce(&cfg.kafka, &mut generator, &options, None, &shutdown)
        .await
        .with_context(|| format!("produce to `{topic}`"))?;
    println!(
        "sent {} records ({} valid, {} malformed, {} bytes) in {:.1}s = {:.0}/s; delivered {}, failed {}",
        report.sent,
        report.valid,
        report.malformed,
        report.bytes,
        report.elapsed.as_secs_f64(),
        report.rate(),
        report.delivered,
        report.failed,
    );
    if report.failed > 0 {
        anyhow::bail!(
            "{} records were not delivered; first error: {}",
            report.failed,
            report.first_error.unwrap_or_default()
        );
    }
    Ok(())
}
