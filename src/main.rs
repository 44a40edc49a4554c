//! `tally`: the one binary. Each subcommand is a role or an operator tool; see
//! `tally --help`. Errors end here as `anyhow` with the cause chain printed.

mod alloc;
mod cmd;
mod shutdown;
mod supervise;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tally_core::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Lambda-architecture analytics: Kafka in, exact and live dashboards out"
)]
struct Cli {
    /// Path of the config file. Environment variables TALLY_<SECTION>__<KEY> override it.
    #[arg(
        long,
        short,
        global = true,
        env = "TALLY_CONFIG",
        default_value = "tally.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every role in one process: speed, archive, batch scheduler and serving.
    Run,
    /// The speed layer: Kafka to Redis counters, effectively-once.
    Speed,
    /// The archiver: Kafka to the Parquet master dataset.
    Archive,
    /// Batch runs over the master dataset.
    Batch {
        #[command(subcommand)]
        command: BatchCmd,
    },
    /// Recompute a view over a time range now (takes the batch lock).
    Recompute {
        /// The view to recompute.
        #[arg(long)]
        view: String,
        /// Start of the event-time range: RFC 3339 or epoch ms.
        #[arg(long)]
        from: String,
        /// End of the event-time range (exclusive): RFC 3339 or epoch ms.
        #[arg(long)]
        to: String,
        /// Recompute every day of the view, not only the range.
        #[arg(long)]
        full: bool,
    },
    /// The serving layer: query API and dashboard.
    Serve,
    /// Produce synthetic events.
    Gen(cmd::gen::GenArgs),
    /// Every role with synthetic load flowing and the dashboard served (see infra/demo).
    Demo(cmd::demo::DemoArgs),
    /// Validate the config file and print a summary.
    Check,
}

#[derive(Debug, Subcommand)]
enum BatchCmd {
    /// One batch run now, up to the cut.
    Run {
        #[arg(long)]
        full: bool,
    },
    /// Batch runs on the configured cron schedule.
    Schedule,
}

/// mimalloc, not glibc's malloc: the speed layer's flusher frees each chunk's
/// many small allocations on another thread than the one that made them, and
/// glibc serialises such frees on the arena lock the consume loop allocates
/// from (two thirds of its context switches in a profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // rediss:// needs a process-wide rustls crypto provider (two are built).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config;
    let block_on = |f: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>| {
        runtime()?.block_on(f).map(|()| ExitCode::SUCCESS)
    };
    match cli.command {
        Cmd::Check => cmd::check::run(&config),
        Cmd::Run => block_on(Box::pin(cmd::run::run(load(&config)?))),
        Cmd::Speed => block_on(Box::pin(cmd::speed::run(load(&config)?))),
        Cmd::Archive => block_on(Box::pin(cmd::archive::run(load(&config)?))),
        Cmd::Serve => block_on(Box::pin(cmd::serve::run(load(&config)?))),
        Cmd::Batch {
            command: BatchCmd::Run { full },
        } => block_on(Box::pin(cmd::batch::run_once(load(&config)?, full))),
        Cmd::Batch {
            command: BatchCmd::Schedule,
        } => block_on(Box::pin(cmd::batch::schedule(load(&config)?))),
        Cmd::Recompute {
            view,
            from,
            to,
            full,
        } => {
            let cfg = load(&config)?;
            block_on(Box::pin(async move {
                cmd::recompute::run(cfg, &view, &from, &to, full).await
            }))
        }
        Cmd::Gen(args) => {
            let cfg = load(&config)?;
            block_on(Box::pin(async move {
                cmd::gen::run(cfg, args, shutdown::on_signal()).await
            }))
        }
        Cmd::Demo(args) => {
            let cfg = load(&config)?;
            block_on(Box::pin(cmd::demo::run(cfg, args)))
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).with_context(|| format!("{} is not a valid config", path.display()))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}
