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
//! (topic, partition, offset); the others are not touched. A view with
//! `dedup = "event_id"` keeps one row per event_id ([`super::dedup`]). Then the event
//! time is bucketed, and one `group_by` on the bucket and the dimensions'
//! columns (or, when every dimension is a string, on one integer packing
//! both, [`super::group_key`]) aggregates every measure: count as a length or a count of
//! non-null values, sum as an `Int128` sum of the integers (exact) beside a
//! float sum, min and max per type, distinct as entries imploded per group
//! and reduced to the sketch's registers ([`super::distinct`]), quantiles
//! as bucket codes imploded per group and reduced to the sketch's buckets
//! and counts ([`super::quantile`]). No per-group closure: every step
//! streams.
//!
//! The result is the snapshot's frame, sorted by bucket ([`sorted`]):
//! `bucket`, `d<i>` (each dimension's text), and per measure `m<k>` (count
//! `UInt64`, min/max `Float64`, distinct registers `List<UInt32>`,
//! quantiles one packed (bucket code, count) entry per bucket `List<Int64>`) or
//! `m<k>:int` (`Int128`) and `m<k>:float` (sum). [`rollup`] makes the
//! coarser levels from it with one more `group_by`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use polars::prelude::*;
use tally_core::agg::AggKind;
use tally_core::view::{FieldPath, ViewDef};

use super::dedup;
use super::distinct;
use super::fetch::Source;
use super::group_key;
use super::quantile;
use crate::promote::PropType;

const DAY_MS: i64 = 86_400_000;

/// What a view reads from archive files.
#[derive(Debug, Clone)]
pub(super) struct Needs {
    /// Envelope columns, always with the coordinates, `time_ms` and `reject`.
    pub envelope: Vec<&'static str>,
    /// Property keys, in a fixed order (a key's index names its columns).
    pub keys: Vec<String>,
}

impl Needs {
    pub(super) fn of(view: &ViewDef) -> Needs {
        let mut fields: Vec<FieldPath> = view.dimensions.clone();
        fields.extend(view.measures.iter().filter_map(|m| m.field.clone()));
        fields.extend(view.parsed_filter().into_iter().map(|(p, _)| p));
        let mut envelope = vec!["topic", "partition", "offset", "reject", "time_ms"];
        if view.dedups() {
            envelope.extend(dedup::COLUMNS);
        }
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

/// The columns of the rows that hold a field's values, by type.
type Columns = Vec<(PropType, String)>;

/// The plan of one view over one day of `sources`; `overlapping` lists
/// groups of source indexes that may share records.
pub(super) fn plan(
    view: &ViewDef,
    needs: &Needs,
    day: i64,
    sources: &[Arc<Source>],
    overlapping: &[Vec<usize>],
) -> PolarsResult<LazyFrame> {
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
        let coords = ["topic", "partition", "offset"].map(col);
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
    // One row per event_id for a dedup view (the day is the horizon).
    let rows = if view.dedups() {
        dedup::first_copies(rows)
    } else {
        rows
    };

    // Bucket, dimension texts, distinct entries, group, aggregate.
    let g = view.granularity.as_ms();
    let dimension_columns: Vec<Columns> = view.dimensions.iter().map(&columns_of).collect();
    let mut with: Vec<Expr> = Vec::new();
    let mut keys: Vec<Expr> = Vec::new();
    let mut bucket = col("bucket");
    let mut dims: Vec<Expr> = Vec::new();
    if let Some(texts) = string_columns(&dimension_columns) {
        // Every dimension a string: one packed integer key.
        let packing = group_key::Packing::new(day * DAY_MS, g, texts.len());
        with.push(packing.key(col("time_ms"), &texts).alias(KEY));
        keys.push(col(KEY));
        bucket = packing.bucket(col(KEY)).alias("bucket");
        for i in 0..texts.len() {
            dims.push(packing.text(col(KEY), i).alias(format!("d{i}").as_str()));
        }
    } else {
        // The bucket's start, also for times before 1970: the remainder
        // made non-negative whichever way `%` rounds.
        let t = col("time_ms");
        let rem = ((t.clone() % lit(g)) + lit(g)) % lit(g);
        with.push((t - rem).alias("bucket"));
        keys.push(col("bucket"));
        // A dimension is known by its text. One with values of one type is
        // grouped by its typed column and turned into text per group (one
        // text per value); one with several types is turned into text per
        // row, so that `30` and `"30"` are one group.
        for (i, columns) in dimension_columns.iter().enumerate() {
            let name = format!("d{i}");
            match columns.as_slice() {
                [] => dims.push(lit(NULL).cast(DataType::String).alias(name.as_str())),
                [(t, c)] => {
                    keys.push(col(c.as_str()));
                    dims.push(text(col(c.as_str()), *t).alias(name.as_str()));
                }
                cols => {
                    let texts: Vec<Expr> = cols
                        .iter()
                        .map(|(t, c)| text(col(c.as_str()), *t))
                        .collect();
                    with.push(coalesce(&texts).alias(name.as_str()));
                    keys.push(col(name.as_str()));
                    dims.push(col(name.as_str()));
                }
            }
        }
    }
    let mut aggs: Vec<Expr> = Vec::new();
    let mut measures: Vec<Expr> = Vec::new();
    for (k, m) in view.measures.iter().enumerate() {
        let cols = m.field.as_ref().map(columns_of);
        let of = |t: PropType| {
            cols.iter()
                .flatten()
                .find(|(ct, _)| *ct == t)
                .map(|(_, c)| col(c.as_str()))
        };
        let (name, int, float) = (format!("m{k}"), format!("m{k}:int"), format!("m{k}:float"));
        match m.agg {
            AggKind::Count => {
                let present = cols
                    .as_ref()
                    .map(|cs| any_of(cs.iter().map(|(_, c)| col(c.as_str()).is_not_null())));
                aggs.push(match present {
                    None => len().alias(name.as_str()),
                    Some(p) => p.cast(DataType::UInt64).sum().alias(name.as_str()),
                });
                measures.push(col(name.as_str()).cast(DataType::UInt64));
            }
            AggKind::Sum => {
                let i =
                    of(PropType::Int).map(|c| c.cast(DataType::Int128).sum().alias(int.as_str()));
                let f = of(PropType::Float).map(|c| c.sum().alias(float.as_str()));
                measures.push(match i {
                    Some(i) => {
                        aggs.push(i);
                        col(int.as_str()).fill_null(lit(0).cast(DataType::Int128))
                    }
                    None => lit(0).cast(DataType::Int128).alias(int.as_str()),
                });
                measures.push(match f {
                    Some(f) => {
                        aggs.push(f);
                        col(float.as_str()).fill_null(lit(0.0))
                    }
                    None => lit(0.0).alias(float.as_str()),
                });
            }
            AggKind::Min | AggKind::Max => {
                let min = m.agg == AggKind::Min;
                // The integers' extreme as f64: the conversion is monotonic.
                let mut parts: Vec<Expr> = Vec::new();
                for (t, c) in [(PropType::Int, &int), (PropType::Float, &float)] {
                    if let Some(v) = of(t) {
                        aggs.push(if min { v.min() } else { v.max() }.alias(c.as_str()));
                        parts.push(col(c.as_str()).cast(DataType::Float64));
                    }
                }
                measures.push(
                    match parts.len() {
                        0 => lit(NULL).cast(DataType::Float64),
                        1 => parts.remove(0),
                        _ if min => polars::lazy::dsl::min_horizontal(parts)?,
                        _ => polars::lazy::dsl::max_horizontal(parts)?,
                    }
                    .alias(name.as_str()),
                );
            }
            AggKind::Distinct => {
                let cols = cols.unwrap_or_default();
                let entries = if cols.is_empty() {
                    lit(NULL).cast(DataType::UInt32).alias(name.as_str())
                } else {
                    distinct::entries(&cols, &name)
                };
                with.push(entries);
                aggs.push(col(name.as_str()).implode(false));
                measures.push(distinct::registers(col(name.as_str())).alias(name.as_str()));
            }
            AggKind::Quantiles => {
                with.push(quantile::entries(&cols.unwrap_or_default(), &name));
                aggs.push(col(name.as_str()).implode(false));
                measures.push(quantile::sketch(col(name.as_str())).alias(name.as_str()));
            }
        }
    }
    if aggs.is_empty() {
        aggs.push(len().alias("_rows"));
    }
    let mut out = vec![bucket];
    out.extend(dims);
    out.extend(measures);
    let lf = rows.with_columns(with).group_by(keys).agg(aggs).select(out);
    Ok(sorted(lf))
}

/// The packed group key's column ([`group_key`]).
const KEY: &str = "_key";

/// The string column of each dimension, when every dimension has exactly
/// one and there are at most [`group_key::MAX_DIMENSIONS`] of them.
fn string_columns(dimensions: &[Columns]) -> Option<Vec<Expr>> {
    if dimensions.is_empty() || dimensions.len() > group_key::MAX_DIMENSIONS {
        return None;
    }
    dimensions
        .iter()
        .map(|cs| match cs.as_slice() {
            [(PropType::Str, c)] => Some(col(c.as_str())),
            _ => None,
        })
        .collect()
}

/// `finer` (a day's groups, as [`plan`] lays them out, or a roll-up of
/// them) rolled up to buckets of `level_ms`, a multiple of its own: one
/// more `group_by` over the groups, never the rows again. Counts and sums
/// add up, extremes take theirs. Sketches are not gathered: the group-by
/// collects each coarse group's row numbers, and a distinct measure's
/// registers (the register-wise maximum) and a quantile measure's counts
/// are merged from the finer rows where they lie ([`super::list_rows`]).
pub(super) fn rollup(finer: &DataFrame, view: &ViewDef, level_ms: i64) -> PolarsResult<LazyFrame> {
    const ROWS: &str = "rows";
    let b = col("bucket");
    let bucket = b.clone() - (((b % lit(level_ms)) + lit(level_ms)) % lit(level_ms));
    let mut keys = vec![col("bucket")];
    keys.extend((0..view.dimensions.len()).map(|i| col(format!("d{i}").as_str())));
    let mut aggs: Vec<Expr> = Vec::new();
    let mut measures: Vec<Expr> = Vec::new();
    for (k, m) in view.measures.iter().enumerate() {
        let (name, int, float) = (format!("m{k}"), format!("m{k}:int"), format!("m{k}:float"));
        match m.agg {
            AggKind::Count => aggs.push(col(name.as_str()).sum()),
            AggKind::Sum => {
                aggs.push(col(int.as_str()).sum());
                aggs.push(col(float.as_str()).sum());
            }
            AggKind::Min => aggs.push(col(name.as_str()).min()),
            AggKind::Max => aggs.push(col(name.as_str()).max()),
            AggKind::Distinct => {
                let lists = finer.column(name.as_str())?.list()?.clone();
                measures.push(distinct::registers_of_rows(col(ROWS), lists).alias(name.as_str()));
            }
            AggKind::Quantiles => {
                let lists = finer.column(name.as_str())?.list()?.clone();
                measures.push(quantile::merged_rows(col(ROWS), lists).alias(name.as_str()));
            }
        }
    }
    let sketches = !measures.is_empty();
    let mut lf = finer.clone().lazy();
    if sketches {
        lf = lf.with_row_index(ROWS, None);
        aggs.push(col(ROWS));
    }
    let mut lf = lf
        .with_column(bucket.alias("bucket"))
        .group_by(keys)
        .agg(aggs);
    if sketches {
        lf = lf.with_columns(measures).drop(cols([ROWS]));
    }
    Ok(sorted(lf))
}

/// Snapshot rows are sorted by bucket, as readers need; a bucket's groups
/// stay in the order the group-by gave them (ordering them by their texts
/// is a string sort of every group, which no reader uses).
fn sorted(lf: LazyFrame) -> LazyFrame {
    lf.sort(["bucket"], SortMultipleOptions::default())
}

/// The text of a value of type `t` (as [`tally_core::view::ScalarRef::write_text`]
/// writes it): a string as it is, an integer or boolean as Polars casts it
/// (decimal digits, `true`/`false`), a float as Rust's `Display` prints it.
fn text(c: Expr, t: PropType) -> Expr {
    match t {
        PropType::Str => c,
        PropType::Int | PropType::Bool => c.cast(DataType::String),
        PropType::Float => c.map(
            |c: Column| {
                let out: StringChunked =
                    c.f64()?.iter().map(|v| v.map(|v| v.to_string())).collect();
                Ok(out.with_name(c.name().clone()).into_column())
            },
            |_, f| Ok(Field::new(f.name().clone(), DataType::String)),
        ),
    }
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
    // Files of one signature may still differ in columns the plan does not
    // read (each file promotes its own frequent keys): those are ignored,
    // where Polars' default rejects a file holding a column the first lacks.
    let args = UnifiedScanArgs {
        cache: false,
        glob: false,
        hive_options: polars::io::HiveOptions::new_disabled(),
        extra_columns_policy: ExtraColumnsPolicy::Ignore,
        ..Default::default()
    };
    let files = ScanSources::Buffers(Arc::from(buffers));
    let lf: LazyFrame = DslBuilder::scan_parquet(files, ParquetOptions::default(), args)?
        .build()
        .into();
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
