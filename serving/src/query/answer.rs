//! A finished fold as the API answers it: series per group, ranked.
//!
//! Guarantees: groups with data are ranked by their total of the first
//! requested measure (largest first, then by their values), at most
//! `max_groups` are listed and `groups_total` says how many there were; the
//! totals always cover every group. Integers stay integers in JSON; a value
//! without input (min/max) is null.

use std::collections::BTreeMap;

use super::fold::{Final, Folded};
use crate::dto::{Point, Series};

/// The merged answer, before freshness and degradation are added.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    pub series: Vec<Series>,
    pub totals: BTreeMap<String, serde_json::Value>,
    pub groups_total: usize,
}

/// The JSON value of a final aggregate.
pub fn json_value(v: &Final) -> serde_json::Value {
    match *v {
        Final::Count(c) | Final::Distinct(c) => serde_json::Value::from(c),
        Final::Sum(int, 0.0) => int_value(int),
        Final::Sum(int, float) => number(int as f64 + float),
        Final::Extreme(v) => v.map_or(serde_json::Value::Null, number),
    }
}

fn number(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// An exact integer as JSON: an integer while it fits 64 bits, else the
/// nearest double (what most JSON readers would make of it anyway).
fn int_value(i: i128) -> serde_json::Value {
    if let Ok(i) = i64::try_from(i) {
        serde_json::Value::from(i)
    } else if let Ok(u) = u64::try_from(i) {
        serde_json::Value::from(u)
    } else {
        number(i as f64)
    }
}

/// The value a group is ranked by.
fn rank_value(v: &Final) -> f64 {
    match *v {
        Final::Count(c) | Final::Distinct(c) => c as f64,
        Final::Sum(int, float) => int as f64 + float,
        Final::Extreme(v) => v.unwrap_or(f64::NEG_INFINITY),
    }
}

/// Rank, cut to `max_groups` and name the parts of `f`.
pub fn answer(f: Folded, dims: &[String], measures: &[&str], max_groups: usize) -> Merged {
    let to_map = |vals: &[Final]| -> BTreeMap<String, serde_json::Value> {
        measures
            .iter()
            .zip(vals)
            .map(|(n, v)| ((*n).to_owned(), json_value(v)))
            .collect()
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
    let series = order
        .into_iter()
        .map(|i| Series {
            group: dims
                .iter()
                .cloned()
                .zip(f.keys[i].iter().map(|v| v.as_deref().map(str::to_owned)))
                .collect(),
            points: f.points[i]
                .iter()
                .map(|(t, vals)| Point {
                    t: *t,
                    values: to_map(vals),
                })
                .collect(),
            totals: to_map(&f.totals[i]),
        })
        .collect();
    Merged {
        series,
        totals: to_map(&f.grand),
        groups_total,
    }
}
