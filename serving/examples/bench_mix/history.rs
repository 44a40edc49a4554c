//! The mix benchmark's history: 90 days of three views written once as
//! snapshot files at every roll-up level, from synthetic, deterministic
//! cells (the same seed gives the same files for Tally and DuckDB).

use std::collections::BTreeMap;
use std::time::Instant;

use object_store::ObjectStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_core::agg::{Agg, AggKind, Num};
use tally_core::time::MS_PER_DAY;
use tally_core::view::ViewDef;
use tally_store::manifest::Manifest;

use crate::common::{roll_up, write_level, write_manifest, CellKey};
use crate::now_ms;

pub(crate) const TYPES: [&str; 5] = ["page_view", "click", "purchase", "signup", "search"];
pub(crate) const COUNTRIES: [&str; 6] = ["us", "de", "fr", "in", "br", "jp"];
pub(crate) const PAGES: usize = 100;

/// The groups of a view, each with a weight (how often it has events).
pub(crate) fn groups(view: &ViewDef) -> Vec<(Vec<Option<String>>, f64)> {
    match view.name.as_str() {
        "page_views" => (1..=PAGES)
            .map(|p| (vec![Some(format!("/p{p}"))], 1.0 / (p as f64).powf(0.8)))
            .collect(),
        "by_type" => TYPES
            .iter()
            .flat_map(|t| {
                COUNTRIES
                    .iter()
                    .map(move |c| (vec![Some((*t).to_owned()), Some((*c).to_owned())], 0.6))
            })
            .collect(),
        _ => COUNTRIES
            .iter()
            .map(|c| (vec![Some((*c).to_owned())], 1.0))
            .collect(),
    }
}

/// One day of a view at its own level: synthetic, deterministic cells.
fn day_cells(view: &ViewDef, day: i64, until_ms: i64) -> BTreeMap<CellKey, Vec<Agg>> {
    let mut rng = StdRng::seed_from_u64((day as u64) << 8 ^ view.name.len() as u64);
    let g = view.granularity.as_ms();
    let mut out = BTreeMap::new();
    let groups = groups(view);
    for b in (0..MS_PER_DAY / g).map(|i| day * MS_PER_DAY + i * g) {
        if b >= until_ms {
            break;
        }
        for (group, weight) in &groups {
            if !rng.gen_bool(weight.min(1.0) * 0.8) {
                continue;
            }
            let n = rng.gen_range(1..8u64);
            let aggs = view
                .measures
                .iter()
                .map(|m| {
                    let mut a = Agg::empty(m.agg);
                    for _ in 0..n {
                        match m.agg {
                            AggKind::Count => a.add_key(b""),
                            AggKind::Distinct => {
                                a.add_key(format!("user_{}", rng.gen_range(0..100_000)).as_bytes())
                            }
                            _ => a.add_num(Num::Int(rng.gen_range(1..50_000))),
                        }
                    }
                    a
                })
                .collect();
            out.insert((b, group.clone()), aggs);
        }
    }
    out
}

/// Write the history once; returns the manifests.
pub(crate) async fn history(
    store: &dyn ObjectStore,
    dir: &std::path::Path,
    views: &[ViewDef],
    days: i64,
) -> Vec<Manifest> {
    let marker = dir.join("history.complete");
    if !marker.exists() {
        let end = now_ms().div_euclid(3_600_000) * 3_600_000;
        let last_day = end.div_euclid(MS_PER_DAY);
        for view in views {
            let started = Instant::now();
            let mut files = Vec::new();
            for day in last_day - days + 1..=last_day {
                let base = day_cells(view, day, end);
                for level in view.levels() {
                    let cells = if level == view.granularity {
                        base.clone()
                    } else {
                        roll_up(&base, level)
                    };
                    files.extend(write_level(store, view, &cells, "history", level).await);
                }
            }
            let cut = end / 3_600_000;
            write_manifest(store, view, "history", cut, &view.levels(), files, 0).await;
            eprintln!(
                "[mix] history of {}: {days} days in {:.1} s",
                view.name,
                started.elapsed().as_secs_f64()
            );
        }
        std::fs::write(&marker, b"").expect("marker");
    }
    let mut out = Vec::new();
    for v in views {
        let text = std::fs::read(
            dir.join("store")
                .join(tally_store::paths::manifest(&v.name)),
        )
        .expect("manifest");
        out.push(serde_json::from_slice(&text).expect("manifest json"));
    }
    out
}
