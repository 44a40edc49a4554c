//! A view query: parsing its parameters and merging the two layers.
//!
//! [`Query::parse`] turns the raw query string into a checked plan or a 400
//! naming the parameter. [`execute`] folds, for every base bucket whose start
//! lies in `[from, to)`, the snapshot cells and the speed deltas of the slices
//! at or after the cut into output buckets of the requested granularity and
//! groups projected on `group_by`, keeping only rows that pass the filters.
//! Every fold is [`Agg::merge`], so counts, sums, mins and maxes are exact and
//! distinct counts are HyperLogLog unions (never sums), per bucket and over the
//! whole range.
//!
//! Guarantees: parsing rejects what it cannot honour (unknown view parts,
//! granularities that do not roll up, ranges over `max_buckets`) with a 4xx;
//! more than `max_groups` groups are cut to the largest ones by the first
//! measure and the overflow is reported; totals always cover every group.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tally_core::agg::Agg;
use tally_core::keys::parse_group;
use tally_core::time::{Granularity, MS_PER_DAY};
use tally_core::view::{FieldPath, ViewDef};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::snapshot::ViewSnapshot;
use crate::speed::Delta;

/// The furthest from 1970 a query may reach (year ~5138): keeps arithmetic safe.
const MAX_ABS_MS: i64 = 100_000_000_000_000;

/// A checked query on one view.
#[derive(Debug, Clone)]
pub struct Query {
    pub from_ms: i64,
    pub to_ms: i64,
    pub granularity: Granularity,
    /// Indices into the view's dimensions.
    pub group_by: Vec<usize>,
    /// Per dimension index, the allowed values (OR within, AND across).
    pub filters: BTreeMap<usize, Vec<String>>,
    /// Indices into the view's measures.
    pub measures: Vec<usize>,
    /// SSE refresh interval, when given (`interval`).
    pub interval_ms: Option<i64>,
}

/// Parameters that name no query input but are accepted.
const PASSIVE: &[&str] = &["access_token"];

/// Every parameter a query accepts.
const KNOWN: &[&str] = &[
    "from",
    "to",
    "last",
    "granularity",
    "group_by",
    "filter",
    "measures",
    "interval",
    "access_token",
];

/// Parse a time bound: RFC 3339 or epoch milliseconds.
pub fn parse_time(name: &str, s: &str) -> Result<i64, ApiError> {
    let ms = if let Ok(ms) = s.trim().parse::<i64>() {
        ms
    } else {
        chrono::DateTime::parse_from_rfc3339(s.trim())
            .map_err(|_| {
                ApiError::bad(
                    "bad_time",
                    format!("`{name}`=`{s}` is not a time: use RFC 3339 (2024-01-01T00:00:00Z) or epoch milliseconds"),
                )
            })?
            .timestamp_millis()
    };
    if !(-MAX_ABS_MS..=MAX_ABS_MS).contains(&ms) {
        return Err(ApiError::bad(
            "bad_time",
            format!("`{name}`=`{s}` is out of range: use a time within ±3000 years of 1970"),
        ));
    }
    Ok(ms)
}

fn dim_index(view: &ViewDef, name: &str, param: &str) -> Result<usize, ApiError> {
    let path = FieldPath::parse(name);
    view.dimensions
        .iter()
        .position(|d| Some(d) == path.as_ref())
        .ok_or_else(|| {
            let dims: Vec<String> = view.dimensions.iter().map(|d| d.as_string()).collect();
            ApiError::bad(
                "unknown_dimension",
                format!(
                    "`{param}`: view `{}` has no dimension `{name}`; its dimensions are {dims:?}",
                    view.name
                ),
            )
        })
}

impl Query {
    /// Parse `raw` (the URL query string) for `view`.
    pub fn parse(
        view: &ViewDef,
        raw: Option<&str>,
        now_ms: i64,
        max_buckets: usize,
    ) -> Result<Query, ApiError> {
        let pairs: Vec<(String, String)> = match raw {
            None => Vec::new(),
            Some(r) => serde_urlencoded_pairs(r)?,
        };
        let mut from = None;
        let mut to = None;
        let mut granularity = view.granularity;
        let mut group_by = Vec::new();
        let mut filters: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let mut measures: Option<Vec<usize>> = None;
        let mut interval_ms = None;
        let mut last_ms = None;
        let mut seen: Vec<&str> = Vec::new();
        for (k, v) in &pairs {
            // An empty value means "not given" (what an HTML form sends for an
            // untouched field), so `from=&granularity=` is the default query.
            if v.trim().is_empty() && KNOWN.contains(&k.as_str()) {
                continue;
            }
            let once = |seen: &mut Vec<&str>, k: &'static str| {
                if seen.contains(&k) {
                    return Err(ApiError::bad(
                        "bad_parameter",
                        format!("`{k}` is given twice: give it once"),
                    ));
                }
                seen.push(k);
                Ok(())
            };
            match k.as_str() {
                "from" => {
                    once(&mut seen, "from")?;
                    from = Some(parse_time("from", v)?);
                }
                "to" => {
                    once(&mut seen, "to")?;
                    to = Some(parse_time("to", v)?);
                }
                "granularity" => {
                    once(&mut seen, "granularity")?;
                    let g: Granularity = v.parse().map_err(|e| {
                        ApiError::bad("bad_granularity", format!("`granularity`: {e}"))
                    })?;
                    if !view.granularity.divides(g) {
                        return Err(ApiError::bad(
                            "bad_granularity",
                            format!(
                                "`granularity`={g} is not a multiple of view `{}`'s granularity {}: use a multiple of it",
                                view.name, view.granularity
                            ),
                        ));
                    }
                    granularity = g;
                }
                "group_by" => {
                    once(&mut seen, "group_by")?;
                    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let i = dim_index(view, name, "group_by")?;
                        if group_by.contains(&i) {
                            return Err(ApiError::bad(
                                "bad_parameter",
                                format!("`group_by` lists `{name}` twice: list it once"),
                            ));
                        }
                        group_by.push(i);
                    }
                }
                "filter" => {
                    let (dim, value) = v.split_once(':').ok_or_else(|| {
                        ApiError::bad(
                            "bad_filter",
                            format!("`filter`=`{v}` is not `dimension:value`, e.g. filter=properties.page:/home"),
                        )
                    })?;
                    let i = dim_index(view, dim.trim(), "filter")?;
                    filters.entry(i).or_default().push(value.to_owned());
                }
                "measures" => {
                    once(&mut seen, "measures")?;
                    let mut list = Vec::new();
                    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let (i, _) = view.measure(name).ok_or_else(|| {
                            let names: Vec<&str> =
                                view.measures.iter().map(|m| m.name.as_str()).collect();
                            ApiError::bad(
                                "unknown_measure",
                                format!(
                                    "`measures`: view `{}` has no measure `{name}`; its measures are {names:?}",
                                    view.name
                                ),
                            )
                        })?;
                        if !list.contains(&i) {
                            list.push(i);
                        }
                    }
                    if list.is_empty() {
                        return Err(ApiError::bad(
                            "unknown_measure",
                            "`measures` is empty: name at least one, or leave it out for all",
                        ));
                    }
                    measures = Some(list);
                }
                "last" => {
                    once(&mut seen, "last")?;
                    let ms = tally_core::time::parse_duration_ms(v)
                        .filter(|ms| *ms > 0 && *ms <= 100 * 365 * MS_PER_DAY)
                        .ok_or_else(|| {
                            ApiError::bad(
                                "bad_parameter",
                                format!("`last`=`{v}` must be a duration like 1h, 24h or 7d"),
                            )
                        })?;
                    last_ms = Some(ms);
                }
                "interval" => {
                    once(&mut seen, "interval")?;
                    let ms = tally_core::time::parse_duration_ms(v)
                        .filter(|ms| (500..=3_600_000).contains(ms))
                        .ok_or_else(|| {
                            ApiError::bad(
                                "bad_parameter",
                                format!("`interval`=`{v}` must be a duration from 500ms to 1h, like 2s"),
                            )
                        })?;
                    interval_ms = Some(ms);
                }
                k if PASSIVE.contains(&k) => {}
                other => {
                    return Err(ApiError::bad(
                        "unknown_parameter",
                        format!("unknown parameter `{other}`: use from, to, last, granularity, group_by, filter, measures"),
                    ))
                }
            }
        }
        let g = granularity.as_ms();
        // Default range: the last 24 hours up to the end of the current bucket.
        let to_ms = match to {
            Some(t) => t,
            None => g * (now_ms.div_euclid(g) + 1),
        };
        let from_ms = match (from, last_ms) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(
                    "bad_parameter",
                    "give `from` or `last`, not both",
                ))
            }
            (Some(f), None) => f,
            (None, last) => to_ms.saturating_sub(last.unwrap_or(MS_PER_DAY)),
        };
        if from_ms >= to_ms {
            return Err(ApiError::bad(
                "bad_range",
                format!("`from` ({from_ms}) must be before `to` ({to_ms})"),
            ));
        }
        let buckets = granularity.bucket(to_ms - 1).div_euclid(g)
            - granularity.bucket(from_ms).div_euclid(g)
            + 1;
        if buckets > max_buckets as i64 {
            return Err(ApiError::bad(
                "too_many_buckets",
                format!(
                    "the range holds {buckets} buckets of {granularity}, over the limit of {max_buckets}: narrow the range or use a coarser granularity"
                ),
            ));
        }
        Ok(Query {
            from_ms,
            to_ms,
            granularity,
            group_by,
            filters,
            measures: measures.unwrap_or_else(|| (0..view.measures.len()).collect()),
            interval_ms,
        })
    }
}

fn serde_urlencoded_pairs(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for part in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((decode_component(k)?, decode_component(v)?));
    }
    Ok(out)
}

/// Percent-decode one query component (`+` is a space).
fn decode_component(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad("bad_parameter", "the query string has a bad %-escape")
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad("bad_parameter", "the query string is not UTF-8"))
}

/// One point of a series.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Point {
    /// Bucket start, epoch ms.
    pub t: i64,
    /// Measure name → value (null: no input, for min/max).
    #[schema(value_type = BTreeMap<String, Option<f64>>)]
    pub values: BTreeMap<String, serde_json::Value>,
}

/// One group's series.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Series {
    /// Dimension → value (null: absent) for each `group_by` dimension.
    #[schema(value_type = BTreeMap<String, Option<String>>)]
    pub group: BTreeMap<String, Option<String>>,
    pub points: Vec<Point>,
    /// This group over the whole range.
    #[schema(value_type = BTreeMap<String, Option<f64>>)]
    pub totals: BTreeMap<String, serde_json::Value>,
}

/// The merged answer, before freshness and degradation are added.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    pub series: Vec<Series>,
    pub totals: BTreeMap<String, serde_json::Value>,
    pub groups_total: usize,
}

/// The JSON value of an aggregate: integers stay integers.
pub fn json_value(agg: &Agg) -> serde_json::Value {
    match agg {
        Agg::Count(c) => serde_json::Value::from(*c),
        Agg::Sum { int, float } if *float == 0.0 => int_value(*int),
        Agg::Distinct(h) => serde_json::Value::from(h.count()),
        other => other
            .value()
            .and_then(serde_json::Number::from_f64)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
    }
}

/// An exact integer as JSON: an integer while it fits 64 bits, else the
/// nearest double (what most JSON readers would make of it anyway).
fn int_value(i: i128) -> serde_json::Value {
    if let Ok(i) = i64::try_from(i) {
        serde_json::Value::from(i)
    } else if let Ok(u) = u64::try_from(i) {
        serde_json::Value::from(u)
    } else {
        serde_json::Number::from_f64(i as f64).map_or(serde_json::Value::Null, Into::into)
    }
}

/// One output group while folding: its points and its running totals.
type GroupAcc = (Vec<(i64, Vec<Agg>)>, Vec<Agg>);

/// Whether `a` is the identity of its monoid (nothing was folded in, or it cancelled out).
pub fn is_identity(a: &Agg) -> bool {
    match a {
        Agg::Count(c) => *c == 0,
        Agg::Sum { int, float } => *int == 0 && *float == 0.0,
        Agg::Min(m) | Agg::Max(m) => m.is_none(),
        Agg::Distinct(h) => h.is_empty(),
    }
}

/// Fold the snapshot and the speed deltas into the answer.
pub fn execute(
    view: &ViewDef,
    q: &Query,
    snap: Option<&ViewSnapshot>,
    deltas: &[Delta],
    max_groups: usize,
) -> Merged {
    let nm = q.measures.len();
    // Position of each view measure in the output, if requested.
    let mut slot = vec![None; view.measures.len()];
    for (pos, &mi) in q.measures.iter().enumerate() {
        slot[mi] = Some(pos);
    }
    let empty = || -> Vec<Agg> {
        q.measures
            .iter()
            .map(|&mi| Agg::empty(view.measures[mi].agg))
            .collect()
    };
    let passes = |g: &[Option<String>]| {
        q.filters.iter().all(|(&d, allowed)| match g.get(d) {
            Some(Some(v)) => allowed.iter().any(|a| a == v),
            _ => false,
        })
    };
    let project = |g: &[Option<String>]| -> Vec<Option<String>> {
        q.group_by
            .iter()
            .map(|&d| g.get(d).cloned().flatten())
            .collect()
    };
    let mut out_groups: HashMap<Vec<Option<String>>, u32> = HashMap::new();
    let mut intern = |key: Vec<Option<String>>| -> u32 {
        let n = out_groups.len() as u32;
        *out_groups.entry(key).or_insert(n)
    };
    let mut acc: HashMap<(i64, u32), Vec<Agg>> = HashMap::new();
    let g = q.granularity;

    if let Some(snap) = snap {
        // Per snapshot group: filtered out, or its output group.
        let mapping: Vec<Option<u32>> = snap
            .groups
            .iter()
            .map(|grp| passes(grp).then(|| intern(project(grp))))
            .collect();
        let first_day = tally_core::time::day_of(q.from_ms);
        let last_day = tally_core::time::day_of(q.to_ms - 1);
        for (_, cells) in snap.days.range(first_day..=last_day) {
            let lo = cells.partition_point(|c| c.bucket_ms < q.from_ms);
            let hi = cells.partition_point(|c| c.bucket_ms < q.to_ms);
            for c in &cells[lo..hi] {
                let Some(Some(og)) = mapping.get(c.group as usize) else {
                    continue;
                };
                let entry = acc
                    .entry((g.bucket(c.bucket_ms), *og))
                    .or_insert_with(empty);
                for (mi, agg) in c.aggs.iter().enumerate() {
                    if let Some(Some(pos)) = slot.get(mi) {
                        entry[*pos].merge(agg);
                    }
                }
            }
        }
    }

    let mut parsed: HashMap<&str, Option<u32>> = HashMap::new();
    for d in deltas {
        let og = *parsed.entry(d.group.as_str()).or_insert_with(|| {
            let grp = parse_group(&d.group)?;
            // A group of another arity was written under another definition.
            (grp.len() == view.dimensions.len() && passes(&grp)).then(|| intern(project(&grp)))
        });
        let (Some(og), Some(Some(pos))) = (og, slot.get(d.measure)) else {
            continue;
        };
        if d.bucket_ms < q.from_ms || d.bucket_ms >= q.to_ms {
            continue;
        }
        let entry = acc.entry((g.bucket(d.bucket_ms), og)).or_insert_with(empty);
        if entry[*pos].kind() == d.agg.kind() {
            entry[*pos].merge(&d.agg);
        }
    }

    // Per output group: its points and totals.
    let mut keys: Vec<Vec<Option<String>>> = vec![Vec::new(); out_groups.len()];
    for (k, i) in out_groups {
        keys[i as usize] = k;
    }
    let mut per_group: Vec<GroupAcc> = (0..keys.len()).map(|_| (Vec::new(), empty())).collect();
    let mut grand = empty();
    for ((bucket, og), aggs) in acc {
        // A bucket where every requested measure is still its identity (e.g. a
        // `max` over events without the field) has nothing to show. Dropping it
        // keeps the answer independent of which layer the events are in: the
        // snapshot has a row per bucket with events, Redis only non-empty parts.
        if aggs.iter().all(is_identity) {
            continue;
        }
        let (points, totals) = &mut per_group[og as usize];
        for (i, a) in aggs.iter().enumerate() {
            totals[i].merge(a);
            grand[i].merge(a);
        }
        points.push((bucket, aggs));
    }
    let names: Vec<&str> = q
        .measures
        .iter()
        .map(|&mi| view.measures[mi].name.as_str())
        .collect();
    let to_map = |aggs: &[Agg]| -> BTreeMap<String, serde_json::Value> {
        names
            .iter()
            .zip(aggs)
            .map(|(n, a)| ((*n).to_owned(), json_value(a)))
            .collect()
    };
    let mut order: Vec<usize> = (0..keys.len())
        .filter(|&i| !per_group[i].0.is_empty())
        .collect();
    let groups_total = order.len();
    if nm > 0 {
        let rank = |i: usize| per_group[i].1[0].value().unwrap_or(f64::NEG_INFINITY);
        order.sort_by(|&a, &b| {
            rank(b)
                .partial_cmp(&rank(a))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| keys[a].cmp(&keys[b]))
        });
    }
    order.truncate(max_groups);
    let dim_names: Vec<String> = q
        .group_by
        .iter()
        .map(|&d| view.dimensions[d].as_string())
        .collect();
    let series = order
        .into_iter()
        .map(|i| {
            let (points, totals) = &mut per_group[i];
            points.sort_by_key(|(t, _)| *t);
            Series {
                group: dim_names
                    .iter()
                    .cloned()
                    .zip(keys[i].iter().cloned())
                    .collect(),
                points: points
                    .iter()
                    .map(|(t, aggs)| Point {
                        t: *t,
                        values: to_map(aggs),
                    })
                    .collect(),
                totals: to_map(totals),
            }
        })
        .collect();
    Merged {
        series,
        totals: to_map(&grand),
        groups_total,
    }
}
