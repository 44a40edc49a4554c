//! `tally check`: validate the config and print what it declares.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tally_core::config::{redact_url, Config};

pub(crate) fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg =
        Config::load(path).with_context(|| format!("{} is not a valid config", path.display()))?;
    println!("{}: ok", path.display());
    println!(
        "  kafka {} topics {:?}, redis {}, store {}",
        cfg.kafka.brokers,
        cfg.kafka.topics,
        redact_url(&cfg.redis.url),
        redact_url(&cfg.store.url)
    );
    for v in &cfg.views {
        let measures: Vec<String> = v
            .measures
            .iter()
            .map(|m| format!("{}={}", m.name, m.agg.name()))
            .collect();
        let dims: Vec<String> = v.dimensions.iter().map(|d| d.as_string()).collect();
        println!(
            "  view {}: {} by [{}] every {}",
            v.name,
            measures.join(", "),
            dims.join(", "),
            v.granularity
        );
    }
    Ok(ExitCode::SUCCESS)
}
