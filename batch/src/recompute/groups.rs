//! A day's aggregated groups: read out of the plan's result, and rolled up
//! to coarser levels.
//!
//! A dimension's value is known by its text ([`tally_core::view::ScalarRef::write_text`]:
//! `30` and `"30"` are one group), but the plan groups by typed columns. A
//! dimension with values of one type has one text per value, so its groups
//! are already right; one with several types can have two groups of the
//! same text, which are merged here by the monoid ([`Agg::merge`],
//! registers by their maximum). Roll-ups merge the same way, from the base
//! level's groups, never from the rows again.

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use polars::prelude::*;
use tally_core::agg::{Agg, AggKind};
use tally_core::view::ViewDef;

use super::distinct;
use super::plan::Layout;
use crate::promote::PropType;

/// One aggregated row of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub bucket: i64,
    pub dims: Vec<Option<String>>,
    /// One state per measure; a distinct measure's is in `regs`.
    pub aggs: Vec<Agg>,
    /// Per measure: a distinct measure's registers, sorted `(index, rank)`.
    pub regs: Vec<Vec<(u32, u32)>>,
}

impl Group {
    fn merge(&mut self, other: &Group) {
        for (a, b) in self.aggs.iter_mut().zip(&other.aggs) {
            a.merge(b);
        }
        for (a, b) in self.regs.iter_mut().zip(&other.regs) {
            if !b.is_empty() {
                *a = distinct::merge(a, b);
            }
        }
    }
}

/// The groups of the plan's result `df`, sorted by bucket and dimensions.
pub fn from_frame(view: &ViewDef, layout: &Layout, df: &DataFrame) -> PolarsResult<Vec<Group>> {
    let n = df.height();
    let bucket: Vec<i64> = df
        .column("bucket")?
        .i64()?
        .iter()
        .map(|b| b.unwrap_or(0))
        .collect();
    let mut dims: Vec<Vec<Option<String>>> = Vec::with_capacity(layout.dims.len());
    let mut mixed = false;
    for cols in &layout.dims {
        mixed |= cols.len() > 1;
        dims.push(texts(df, cols, n)?);
    }
    let mut groups: Vec<Group> = (0..n)
        .map(|r| Group {
            bucket: bucket[r],
            dims: dims.iter().map(|d| d[r].clone()).collect(),
            aggs: Vec::with_capacity(view.measures.len()),
            regs: vec![Vec::new(); view.measures.len()],
        })
        .collect();
    drop(dims);
    for (k, m) in view.measures.iter().enumerate() {
        let column = |suffix: &str| df.column(&format!("m{k}{suffix}")).ok();
        match m.agg {
            AggKind::Count => {
                let counts: Vec<u64> = match column("") {
                    Some(c) => c
                        .cast(&DataType::UInt64)?
                        .u64()?
                        .iter()
                        .map(|v| v.unwrap_or(0))
                        .collect(),
                    None => vec![0; n],
                };
                for (g, c) in groups.iter_mut().zip(counts) {
                    g.aggs.push(Agg::Count(c));
                }
            }
            AggKind::Sum => {
                let ints: Option<Vec<i128>> = column(":int")
                    .map(|c| {
                        Ok::<_, PolarsError>(c.i128()?.iter().map(|v| v.unwrap_or(0)).collect())
                    })
                    .transpose()?;
                let floats = floats(column(":float"))?;
                for (r, g) in groups.iter_mut().enumerate() {
                    g.aggs.push(Agg::Sum {
                        int: ints.as_ref().map_or(0, |v| v[r]),
                        float: floats.as_ref().and_then(|v| v[r]).unwrap_or(0.0),
                    });
                }
            }
            AggKind::Min | AggKind::Max => {
                // The integers' extreme as f64: the conversion is monotonic.
                let ints: Option<Vec<Option<f64>>> = column(":int")
                    .map(|c| {
                        Ok::<_, PolarsError>(c.i64()?.iter().map(|v| v.map(|i| i as f64)).collect())
                    })
                    .transpose()?;
                let floats = floats(column(":float"))?;
                let min = m.agg == AggKind::Min;
                for (r, g) in groups.iter_mut().enumerate() {
                    let a = ints.as_ref().and_then(|v| v[r]);
                    let b = floats.as_ref().and_then(|v| v[r]);
                    let v = match (a, b) {
                        (Some(a), Some(b)) => Some(if min { a.min(b) } else { a.max(b) }),
                        (a, b) => a.or(b),
                    };
                    g.aggs.push(if min { Agg::Min(v) } else { Agg::Max(v) });
                }
            }
            AggKind::Distinct => {
                for g in groups.iter_mut() {
                    g.aggs.push(Agg::empty(AggKind::Distinct));
                }
                if let Some(c) = column("") {
                    // One pass over the entries of all groups, cut by the
                    // list offsets (no Series per group).
                    let lists = c.list()?.rechunk();
                    let values: Vec<Option<u32>> = lists.get_inner().u32()?.iter().collect();
                    let mut entries: Vec<u32> = Vec::new();
                    let mut row = 0;
                    for arr in lists.downcast_iter() {
                        for w in arr.offsets().as_slice().windows(2) {
                            entries.clear();
                            entries.extend(values[w[0] as usize..w[1] as usize].iter().flatten());
                            groups[row].regs[k] = distinct::registers(&mut entries);
                            row += 1;
                        }
                    }
                }
            }
        }
    }
    if mixed {
        groups = merge_equal(groups);
    }
    groups.sort_unstable_by(|a, b| (a.bucket, &a.dims).cmp(&(b.bucket, &b.dims)));
    Ok(groups)
}

fn floats(c: Option<&Column>) -> PolarsResult<Option<Vec<Option<f64>>>> {
    c.map(|c| Ok(c.f64()?.iter().collect())).transpose()
}

/// Each row's text of a dimension whose values are in `cols`.
fn texts(
    df: &DataFrame,
    cols: &[(PropType, String)],
    n: usize,
) -> PolarsResult<Vec<Option<String>>> {
    let mut out: Vec<Option<String>> = vec![None; n];
    for (t, name) in cols {
        let s = df.column(name)?.as_materialized_series();
        match t {
            PropType::Str => {
                for (o, v) in out.iter_mut().zip(s.str()?.iter()) {
                    if let Some(v) = v {
                        *o = Some(v.to_owned());
                    }
                }
            }
            PropType::Int => {
                for (o, v) in out.iter_mut().zip(s.i64()?.iter()) {
                    if let Some(v) = v {
                        *o = Some(v.to_string());
                    }
                }
            }
            PropType::Float => {
                for (o, v) in out.iter_mut().zip(s.f64()?.iter()) {
                    if let Some(v) = v {
                        *o = Some(v.to_string());
                    }
                }
            }
            PropType::Bool => {
                for (o, v) in out.iter_mut().zip(s.bool()?.iter()) {
                    if let Some(v) = v {
                        *o = Some(v.to_string());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Merge groups of equal bucket and dimension texts.
fn merge_equal(groups: Vec<Group>) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::with_capacity(groups.len());
    let mut at: HashMap<(i64, Vec<Option<String>>), usize> = HashMap::new();
    for g in groups {
        match at.get(&(g.bucket, g.dims.clone())) {
            Some(&i) => out[i].merge(&g),
            None => {
                at.insert((g.bucket, g.dims.clone()), out.len());
                out.push(g);
            }
        }
    }
    out
}

/// `groups` rolled up to buckets of `level_ms` (a multiple of theirs),
/// sorted by bucket and dimensions. Each output group's registers are
/// gathered from all its inputs and reduced once, so a day of minutes
/// costs a sort, not 1,440 merges into a growing list.
pub fn rollup(groups: &[Group], level_ms: i64) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    // Per output group and measure: the entries gathered (`index << 8 | rank`).
    let mut gathered: Vec<Vec<Vec<u32>>> = Vec::new();
    let mut at: FxHashMap<(i64, &[Option<String>]), usize> = FxHashMap::default();
    for g in groups {
        let bucket = g.bucket.div_euclid(level_ms) * level_ms;
        let i = *at.entry((bucket, g.dims.as_slice())).or_insert_with(|| {
            out.push(Group {
                bucket,
                dims: g.dims.clone(),
                aggs: g.aggs.iter().map(|a| Agg::empty(a.kind())).collect(),
                regs: vec![Vec::new(); g.regs.len()],
            });
            gathered.push(vec![Vec::new(); g.regs.len()]);
            out.len() - 1
        });
        for (a, b) in out[i].aggs.iter_mut().zip(&g.aggs) {
            a.merge(b);
        }
        for (e, r) in gathered[i].iter_mut().zip(&g.regs) {
            e.extend(r.iter().map(|&(index, rank)| (index << 8) | rank));
        }
    }
    for (g, entries) in out.iter_mut().zip(gathered) {
        for (r, mut e) in g.regs.iter_mut().zip(entries) {
            if !e.is_empty() {
                *r = distinct::registers(&mut e);
            }
        }
    }
    out.sort_unstable_by(|a, b| (a.bucket, &a.dims).cmp(&(b.bucket, &b.dims)));
    out
}
