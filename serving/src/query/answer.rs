//! A finished fold as the API answers it: series per group, ranked.
//!
//! Guarantees: groups with data are ranked by their total of the first
//! requested measure (largest first, then by their values), at most
//! `max_groups` are listed and `groups_total` says how many there were; the
//! totals always cover every group. Values are written by [`Final`]'s JSON
//! form (integers stay integers; a min or max without input is null).

use std::sync::Arc;

use super::fold::Folded;
use crate::dto::{Final, Point, Series, Values};

/// The merged answer, before freshness and degradation are added.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    pub series: Vec<Series>,
    pub totals: Values,
    pub groups_total: usize,
}

/// The value a group is ranked by.
fn rank_value(v: &Final) -> f64 {
    match v {
        Final::Count(c) | Final::Distinct(c) => *c as f64,
        Final::Sum(int, float) => *int as f64 + float,
        Final::Extreme(v) => v.unwrap_or(f64::NEG_INFINITY),
        // The highest percentile asked (p99 by default).
        Final::Quantiles(q) => q
            .values
            .last()
            .copied()
            .flatten()
            .unwrap_or(f64::NEG_INFINITY),
    }
}

/// Rank, cut to `max_groups` and name the parts of `f`.
pub fn answer(f: Folded, dims: &[String], measures: &[&str], max_groups: usize) -> Merged {
    let mut names: Vec<(String, usize)> = measures
        .iter()
        .enumerate()
        .map(|(i, n)| ((*n).to_owned(), i))
        .collect();
    names.sort();
    let names: Arc<[(String, usize)]> = names.into();
    let values = |values: Box<[Final]>| Values {
        names: names.clone(),
        values,
    };
    let mut order: Vec<usize> = (0..f.keys.len())
        .filter(|&i| !f.points[i].is_empty())
        .collect();
    let groups_total = order.len();
    if !measures.is_empty() {
        let rank = |i: usize| rank_value(&f.totals[i][0]);
        order.sort_by(|&a, &b| {
            rank(b)
                .partial_cmp(&rank(a))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| f.keys[a].cmp(&f.keys[b]))
        });
    }
    order.truncate(max_groups);
    let mut points = f.points;
    let mut totals = f.totals;
    let series = order
        .into_iter()
        .map(|i| Series {
            group: dims
                .iter()
                .cloned()
                .zip(f.keys[i].iter().map(|v| v.as_deref().map(str::to_owned)))
                .collect(),
            points: std::mem::take(&mut points[i])
                .into_iter()
                .map(|(t, vals)| Point {
                    t,
                    values: values(vals),
                })
                .collect(),
            totals: values(std::mem::take(&mut totals[i])),
        })
        .collect();
    Merged {
        series,
        totals: values(f.grand),
        groups_total,
    }
}
