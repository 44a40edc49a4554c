//! `tally check`: validate the config and print what it declares.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tally_core::config::{redact_url, Config, RedisMode};
use tally_core::time::format_ms;

pub(crate) fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg =
        Config::load(path).with_context(|| format!("{} is not a valid config", path.display()))?;
    println!("{}: ok", path.display());
    let redis = match cfg.redis.mode {
        RedisMode::Single => redact_url(&cfg.redis.url),
        RedisMode::Cluster => {
            let nodes: Vec<String> = cfg.redis.nodes.iter().map(|n| redact_url(n)).collect();
            format!("cluster [{}]", nodes.join(", "))
        }
    };
    let groups = cfg.redis.groups();
    let groups = if groups > 1 || cfg.redis.mode == RedisMode::Cluster {
        format!(" ({groups} partition groups)")
    } else {
        String::new()
    };
    println!(
        "  kafka {} topics {:?}, redis {redis}{groups}, store {}",
        cfg.kafka.brokers,
        cfg.kafka.topics,
        redact_url(&cfg.store.url)
    );
    for v in &cfg.views {
        let measures: Vec<String> = v
            .measures
            .iter()
            .map(|m| format!("{}={}", m.name, m.agg.name()))
            .collect();
        let dims: Vec<String> = v.dimensions.iter().map(|d| d.as_string()).collect();
        let dedup = match &v.dedup {
            Some(key) => format!(", once per {key} and day"),
            None => String::new(),
        };
        println!(
            "  view {}: {} by [{}] every {}{dedup}",
            v.name,
            measures.join(", "),
            dims.join(", "),
            v.granularity
        );
    }
    for l in &cfg.lookups {
        println!(
            "  lookup {}: {} ({} -> {}), missing -> {}",
            l.name,
            l.path,
            l.key,
            l.value,
            l.missing.as_deref().unwrap_or("null")
        );
    }
    for a in &cfg.alerts {
        let filter: Vec<String> = a
            .filter
            .iter()
            .map(|(column, values)| format!("{column} in {values:?}"))
            .collect();
        println!(
            "  alert {}: {}.{} over {}{} {} {}{} -> {}",
            a.name,
            a.view,
            a.measure,
            format_ms(a.window.0),
            if filter.is_empty() {
                String::new()
            } else {
                format!(" where {}", filter.join(" and "))
            },
            a.comparison.as_str(),
            a.threshold,
            a.for_duration
                .map(|d| format!(" for {}", format_ms(d.0)))
                .unwrap_or_default(),
            webhook_host(&a.webhook)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A webhook's scheme and host only: its path often holds a token.
fn webhook_host(url: &str) -> String {
    let url = redact_url(url);
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((host, path)) if !path.is_empty() => format!("{scheme}://{host}/…"),
            _ => url.clone(),
        },
        None => url.clone(),
    }
}
