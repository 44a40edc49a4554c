//! One view's recompute of one day as a Polars lazy plan, run on the
//! streaming engine.
//!
//! Per source file: a Parquet scan of only the columns the view reads
//! (projection pushdown), each promoted column renamed to a normal name per
//! (key, type) so that files with different promoted columns line up (a
//! type a file lacks is a null column). Files with the same columns share
//! one scan. Rows are kept when valid, in the day, in the view's topics and
//! accepted by its filter (as [`tally_core::view::ViewDef::accepts`]
//! decides: a value matches by its text). Files that may share records
//! ([`super::inputs::overlapping`]) are concatenated and de-duplicated on
//! (topic, partition, offset); the others are not touched. Then the event
//! time is bucketed, and one `group_by` on the bucket and the dimensions'
//! columns aggregates every measure: count as a length or a count of
//! non-null values, sum as an `Int128` sum of the integers (exact) beside a
//! float sum, min and max per type, distinct as entries imploded per group
//! ([`super::distinct`]). No per-group closure: every step streams.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use polars::prelude::*;
use tally_core::agg::AggKind;
use tally_core::view::{FieldPath, ViewDef};

use super::distinct;
use super::fetch::Source;
use crate::promote::PropType;

const DAY_MS: i64 = 86_400_000;

/// What a view reads from archive files.
#[derive(Debug, Clone)]
pub struct Needs {
    /// Envelope columns, always with the coordinates, `time_ms` and `reject`.
    pub envelope: Vec<&'static str>,
    /// Property keys, in a fixed order (a key's index names its columns).
    pub keys: Vec<String>,
}

impl Needs {
    pub fn of(view: &ViewDef) -> Needs {
        let mut fields: Vec<FieldPath> = view.dimensions.clone();
        fields.extend(view.measures.iter().filter_map(|m| m.field.clone()));
        fields.extend(view.parsed_filter().into_iter().map(|(p, _)| p));
        let mut envelope = vec!["topic", "partition", "offset", "reject", "time_ms"];
        let mut keys = BTreeSet::new();
        for f in fields {
            let name = match f {
                FieldPath::EventType => "event_type",
                FieldPath::UserId => "user_id",
                FieldPath::EventId => "event_id",
                FieldPath::Property(k) => {
                    keys.insert(k);
                    continue;
                }
            };
            if !envelope.contains(&name) {
                envelope.push(name);
            }
        }
        Needs {
            envelope,
            keys: keys.into_iter().collect(),
        }
    }

    fn key_index(&self, k: &str) -> Option<usize> {
        self.keys.iter().position(|x| x == k)
    }
}

/// The columns of the plan's output that hold a field's values, by type.
pub type Columns = Vec<(PropType, String)>;

/// How the plan's output is laid out: `bucket`, each dimension's columns,
/// then per measure `m<k>` (count, or distinct entries as a list),
/// `m<k>:int` and `m<k>:float` (sum, min, max), each present only when
/// some input has values of that type.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dims: Vec<Columns>,
}

/// The plan of one view over one day of `sources`; `overlapping` lists
/// groups of source indexes that may share records.
pub fn plan(
    view: &ViewDef,
    needs: &Needs,
    day: i64,
    sources: &[Arc<Source>],
    overlapping: &[Vec<usize>],
) -> PolarsResult<(LazyFrame, Layout)> {
    // Each key's types over the day's files.
    let mut types: Vec<BTreeSet<PropType>> = vec![BTreeSet::new(); needs.keys.len()];
    for s in sources {
        for (k, cols) in &s.keys {
            if let Some(i) = needs.key_index(k) {
                types[i].extend(cols.iter().map(|(t, _)| *t));
            }
        }
    }
    let columns_of = |f: &FieldPath| -> Columns {
        match f {
            FieldPath::EventType => vec![(PropType::Str, "event_type".into())],
            FieldPath::UserId => vec![(PropType::Str, "user_id".into())],
            FieldPath::EventId => vec![(PropType::Str, "event_id".into())],
            FieldPath::Property(k) => {
                let i = needs.key_index(k).unwrap_or(usize::MAX);
                types
                    .get(i)
                    .into_iter()
                    .flatten()
                    .map(|t| (*t, normal_name(i, *t)))
                    .collect()
            }
        }
    };

    // Rows the view keeps.
    let mut keep = col("reject")
        .is_null()
        .and(col("time_ms").is_not_null())
        .and(col("time_ms").gt_eq(lit(day * DAY_MS)))
        .and(col("time_ms").lt(lit((day + 1) * DAY_MS)));
    if !view.topics.is_empty() {
        keep = keep.and(any_of(
            view.topics.iter().map(|t| col("topic").eq(lit(t.as_str()))),
        ));
    }
    for (path, allowed) in view.parsed_filter() {
        keep = keep.and(matches(&columns_of(&path), &allowed));
    }

    // One scan per set of files with the same columns, de-duplicated where
    // files overlap.
    let in_overlap: BTreeSet<usize> = overlapping.iter().flatten().copied().collect();
    let mut frames: Vec<LazyFrame> = Vec::new();
    let alone: Vec<usize> = (0..sources.len())
        .filter(|i| !in_overlap.contains(i))
        .collect();
    for group in by_columns(needs, &types, sources, &alone) {
        frames.push(scan(needs, &types, sources, &group)?.filter(keep.clone()));
    }
    for group in overlapping {
        let parts: Vec<LazyFrame> = by_columns(needs, &types, sources, group)
            .iter()
            .map(|g| scan(needs, &types, sources, g))
            .collect::<PolarsResult<_>>()?;
        let coords = ["topic", "partition", "offset"].map(|c| col(c));
        frames.push(
            concat(parts, union_args())?
                .filter(keep.clone())
                .unique_generic(Some(coords.to_vec()), UniqueKeepStrategy::Any),
        );
    }
    let rows = if frames.len() == 1 {
        frames.remove(0)
    } else {
        concat(frames, union_args())?
    };

    // Bucket, distinct entries, group, aggregate.
    let g = view.granularity.as_ms();
    // The bucket's start, also for times before 1970: the remainder made
    // non-negative whichever way `%` rounds.
    let t = col("time_ms");
    let rem = ((t.clone() % lit(g)) + lit(g)) % lit(g);
    let mut with = vec![(t - rem).alias("bucket")];
    let mut aggs: Vec<Expr> = Vec::new();
    for (k, m) in view.measures.iter().enumerate() {
        let cols = m.field.as_ref().map(columns_of);
        let of = |t: PropType| {
            cols.iter()
                .flatten()
                .find(|(ct, _)| *ct == t)
                .map(|(_, c)| col(c.as_str()))
        };
        match (m.agg, &cols) {
            (AggKind::Count, None) => aggs.push(len().alias(format!("m{k}"))),
            (AggKind::Count, Some(cols)) if !cols.is_empty() => aggs.push(
                any_of(cols.iter().map(|(_, c)| col(c.as_str()).is_not_null()))
                    .cast(DataType::UInt64)
                    .sum()
                    .alias(format!("m{k}")),
            ),
            (AggKind::Sum, _) => {
                if let Some(c) = of(PropType::Int) {
                    aggs.push(c.cast(DataType::Int128).sum().alias(format!("m{k}:int")));
                }
                if let Some(c) = of(PropType::Float) {
                    aggs.push(c.sum().alias(format!("m{k}:float")));
                }
            }
            (AggKind::Min | AggKind::Max, _) => {
                for (t, suffix) in [(PropType::Int, "int"), (PropType::Float, "float")] {
                    if let Some(c) = of(t) {
                        let a = if m.agg == AggKind::Min {
                            c.min()
                        } else {
                            c.max()
                        };
                        aggs.push(a.alias(format!("m{k}:{suffix}")));
                    }
                }
            }
            (AggKind::Distinct, Some(cols)) if !cols.is_empty() => {
                let name = format!("h{k}");
                with.push(distinct::entries(cols, &name));
                aggs.push(col(name.as_str()).implode(false).alias(format!("m{k}")));
            }
            // No input has a value for the field: the measure stays empty.
            _ => {}
        }
    }
    let dims: Vec<Columns> = view.dimensions.iter().map(columns_of).collect();
    let mut keys = vec![col("bucket")];
    keys.extend(dims.iter().flatten().map(|(_, c)| col(c.as_str())));
    if aggs.is_empty() {
        aggs.push(len().alias("_rows"));
    }
    let lf = rows.with_columns(with).group_by(keys).agg(aggs);
    Ok((lf, Layout { dims }))
}

/// The plan's name for the values of key `i` of type `t`.
fn normal_name(i: usize, t: PropType) -> String {
    format!("k{i}:{}", t.name())
}

fn union_args() -> UnionArgs {
    UnionArgs {
        parallel: true,
        rechunk: false,
        to_supertypes: false,
        ..Default::default()
    }
}

fn any_of(exprs: impl IntoIterator<Item = Expr>) -> Expr {
    exprs
        .into_iter()
        .reduce(|a, b| a.or(b))
        .unwrap_or_else(|| lit(false))
}

/// Whether the field in `columns` has one of the `allowed` texts. A value
/// matches when its text equals one: a string as it is, a number as
/// `Display` prints it, a boolean as `true`/`false`.
fn matches(columns: &Columns, allowed: &[String]) -> Expr {
    let mut terms: Vec<Expr> = Vec::new();
    for (t, c) in columns {
        let c = col(c.as_str());
        for a in allowed {
            let term = match t {
                PropType::Str => Some(c.clone().eq(lit(a.as_str()))),
                PropType::Int => a
                    .parse::<i64>()
                    .ok()
                    .filter(|i| i.to_string() == *a)
                    .map(|i| c.clone().eq(lit(i))),
                PropType::Float => a
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.to_string() == *a)
                    .map(|f| c.clone().eq(lit(f))),
                PropType::Bool => match a.as_str() {
                    "true" => Some(c.clone().eq(lit(true))),
                    "false" => Some(c.clone().eq(lit(false))),
                    _ => None,
                },
            };
            terms.extend(term);
        }
    }
    // A missing value (null) matches nothing: `filter` drops null.
    any_of(terms)
}

/// `members` of `sources` grouped by the columns they hold for the plan.
fn by_columns(
    needs: &Needs,
    types: &[BTreeSet<PropType>],
    sources: &[Arc<Source>],
    members: &[usize],
) -> Vec<Vec<usize>> {
    let mut groups: BTreeMap<Vec<Option<String>>, Vec<usize>> = BTreeMap::new();
    for &i in members {
        groups
            .entry(signature(needs, types, &sources[i]))
            .or_default()
            .push(i);
    }
    groups.into_values().collect()
}

/// Per (key, type) the plan reads, the source's column (or none).
fn signature(needs: &Needs, types: &[BTreeSet<PropType>], s: &Source) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for (i, k) in needs.keys.iter().enumerate() {
        let cols = s.keys.get(k);
        for t in &types[i] {
            out.push(
                cols.and_then(|cs| cs.iter().find(|(ct, _)| ct == t))
                    .map(|(_, c)| c.clone()),
            );
        }
    }
    out
}

/// One scan of the sources `group` (same signature), normalised.
fn scan(
    needs: &Needs,
    types: &[BTreeSet<PropType>],
    sources: &[Arc<Source>],
    group: &[usize],
) -> PolarsResult<LazyFrame> {
    let buffers: Vec<polars_buffer::Buffer<u8>> =
        group.iter().map(|&i| sources[i].bytes.clone()).collect();
    let args = ScanArgsParquet {
        cache: false,
        glob: false,
        hive_options: polars::io::HiveOptions::new_disabled(),
        ..Default::default()
    };
    let lf = LazyFrame::scan_parquet_sources(ScanSources::Buffers(Arc::from(buffers)), args)?;
    let sig = signature(needs, types, &sources[group[0]]);
    let mut select: Vec<Expr> = needs.envelope.iter().map(|c| col(*c)).collect();
    let mut n = 0;
    for (i, ts) in types.iter().enumerate() {
        for t in ts {
            let e = match &sig[n] {
                Some(c) => col(c.as_str()),
                None => lit(NULL).cast(dtype(*t)),
            };
            select.push(e.alias(normal_name(i, *t)));
            n += 1;
        }
    }
    Ok(lf.select(select))
}

fn dtype(t: PropType) -> DataType {
    match t {
        PropType::Str => DataType::String,
        PropType::Int => DataType::Int64,
        PropType::Float => DataType::Float64,
        PropType::Bool => DataType::Boolean,
    }
}
