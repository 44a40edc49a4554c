//! `tally recompute --view V --from T --to T [--full]`: an operator's ad-hoc
//! recompute, now. It takes the batch lock like every other run, so it never
//! overlaps the nightly run, and shows a progress bar and a summary.

use anyhow::{bail, Context};
use tally_batch::RunOptions;
use tally_core::config::Config;
use tally_core::time::parse_instant;

use crate::cmd::progress::{print_summary, Bar};

pub(crate) async fn run(
    cfg: Config,
    view: &str,
    from: &str,
    to: &str,
    full: bool,
) -> anyhow::Result<()> {
    if cfg.view(view).is_none() {
        let names: Vec<&str> = cfg.views.iter().map(|v| v.name.as_str()).collect();
        bail!("--view `{view}` is not configured; the views are {names:?}");
    }
    let from_ms = instant("--from", from)?;
    let to_ms = instant("--to", to)?;
    if from_ms >= to_ms {
        bail!("--from ({from}) must be before --to ({to})");
    }
    crate::alloc::no_transparent_huge_pages();
    let store = crate::cmd::open_store(&cfg)?;
    let opts = RunOptions {
        full,
        views: Some(vec![view.to_owned()]),
        range_ms: Some((from_ms, to_ms)),
        ..RunOptions::default()
    };
    let bar = Bar::new();
    let summary = tally_batch::run_locked(&cfg, store, opts, &|p| bar.on(p))
        .await
        .context("recompute")?;
    bar.finish();
    print_summary(&summary);
    Ok(())
}

fn instant(flag: &str, s: &str) -> anyhow::Result<i64> {
    parse_instant(s).with_context(|| {
        format!(
            "{flag} `{s}` is not a time: use RFC 3339 (2024-01-01T00:00:00Z) or epoch milliseconds"
        )
    })
}
