//! Query parameters: the raw query string to a checked [`Query`].
//!
//! Guarantees: parsing rejects what it cannot honour with a 4xx naming the
//! parameter and the fix: unknown view parts, granularities that do not roll
//! up, ranges over `max_buckets` buckets (the window's lead-in counted),
//! more than `max_filters` filter values, a parameter given twice, a
//! `window` that is not a multiple of the granularity or is over
//! [`MAX_WINDOW_BUCKETS`] of them, `quantiles` that are not numbers in
//! [0, 1] (at most [`MAX_QUANTILES`]).

use std::collections::BTreeMap;

use tally_core::config::LookupConfig;
use tally_core::time::{Granularity, MS_PER_DAY};
use tally_core::view::{FieldPath, ViewDef};

use crate::dto::Percentiles;
use crate::error::ApiError;

/// What bounds a query beyond its own parameters (`[serve]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_buckets: usize,
    pub max_filters: usize,
}

const MAX_ABS_MS: i64 = 100_000_000_000_000;

/// The longest rolling window, in buckets of the query's granularity: a
/// point merges at most this many cells per group.
pub const MAX_WINDOW_BUCKETS: i64 = 1440;

/// The most percentiles one query may ask for.
pub const MAX_QUANTILES: usize = 32;

/// A checked query on one view.
#[derive(Debug, Clone)]
pub struct Query {
    pub from_ms: i64,
    pub to_ms: i64,
    pub granularity: Granularity,
    /// The columns grouped by.
    pub group_by: Vec<Col>,
    /// Per column, the allowed values (OR within, AND across).
    pub filters: BTreeMap<Col, Vec<String>>,
    /// Indices into the view's measures.
    pub measures: Vec<usize>,
    /// SSE refresh interval, when given (`interval`).
    pub interval_ms: Option<i64>,
    /// Rolling window (`window`), a multiple of the granularity: each point
    /// aggregates the trailing window ending at the end of its bucket.
    pub window_ms: Option<i64>,
    /// The percentiles quantiles measures answer (`quantiles`, default
    /// p50, p90, p99).
    pub percentiles: Percentiles,
}

/// A column a query groups or filters by: a dimension of the view
/// (`properties.page`), or a lookup of one (`properties.page@section`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Col {
    /// Index into the view's dimensions.
    pub dim: usize,
    /// Index into `[[lookup]]`, when the dimension is looked up.
    pub lookup: Option<usize>,
}

impl Col {
    /// The column as a query names it.
    pub fn name(&self, view: &ViewDef, lookups: &[LookupConfig]) -> String {
        let dim = view.dimensions[self.dim].as_string();
        match self.lookup.and_then(|l| lookups.get(l)) {
            Some(l) => format!("{dim}@{}", l.name),
            None => dim,
        }
    }
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
    "window",
    "quantiles",
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

/// The column `name` names: a dimension, or `dimension@lookup`.
fn col_of(
    view: &ViewDef,
    lookups: &[LookupConfig],
    name: &str,
    param: &str,
) -> Result<Col, ApiError> {
    if let Ok(dim) = dim_index(view, name, param) {
        return Ok(Col { dim, lookup: None });
    }
    let Some((dim, lookup)) = name.rsplit_once('@') else {
        return dim_index(view, name, param).map(|dim| Col { dim, lookup: None });
    };
    let dim = dim_index(view, dim.trim(), param)?;
    let lookup = lookups
        .iter()
        .position(|l| l.name == lookup.trim())
        .ok_or_else(|| {
            let names: Vec<&str> = lookups.iter().map(|l| l.name.as_str()).collect();
            ApiError::bad(
                "unknown_lookup",
                format!(
                    "`{param}`: there is no lookup `{lookup}`; the lookups are {names:?} (declare tables with [[lookup]])"
                ),
            )
        })?;
    Ok(Col {
        dim,
        lookup: Some(lookup),
    })
}

impl Query {
    /// Parse `raw` (the URL query string) for `view`, with `lookups` the
    /// tables a column may be looked up in.
    pub fn parse(
        view: &ViewDef,
        raw: Option<&str>,
        now_ms: i64,
        limits: Limits,
        lookups: &[LookupConfig],
    ) -> Result<Query, ApiError> {
        let max_buckets = limits.max_buckets;
        let pairs: Vec<(String, String)> = match raw {
            None => Vec::new(),
            Some(r) => serde_urlencoded_pairs(r)?,
        };
        let mut from = None;
        let mut to = None;
        let mut granularity = view.granularity;
        let mut group_by = Vec::new();
        let mut filters: BTreeMap<Col, Vec<String>> = BTreeMap::new();
        let mut measures: Option<Vec<usize>> = None;
        let mut interval_ms = None;
        let mut last_ms = None;
        let mut window_ms = None;
        let mut percentiles = None;
        let mut filter_values = 0usize;
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
                        let i = col_of(view, lookups, name, "group_by")?;
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
                            format!("`filter`=`{v}` is not `dimension:value` or `dimension@lookup:value`, e.g. filter=properties.page:/home"),
                        )
                    })?;
                    let i = col_of(view, lookups, dim.trim(), "filter")?;
                    filter_values += 1;
                    if filter_values > limits.max_filters {
                        return Err(ApiError::bad(
                            "too_many_filters",
                            format!(
                                "the query gives more than {} `filter` values, the limit (serve.max_filters): filter on fewer values",
                                limits.max_filters
                            ),
                        ));
                    }
                    let list = filters.entry(i).or_default();
                    if !list.iter().any(|v| v == value) {
                        list.push(value.to_owned());
                    }
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
                "window" => {
                    once(&mut seen, "window")?;
                    let ms = tally_core::time::parse_duration_ms(v)
                        .filter(|ms| *ms > 0)
                        .ok_or_else(|| {
                            ApiError::bad(
                                "bad_window",
                                format!("`window`=`{v}` must be a duration like 15m, 1h or 7d"),
                            )
                        })?;
                    window_ms = Some(ms);
                }
                "quantiles" => {
                    once(&mut seen, "quantiles")?;
                    percentiles = Some(parse_quantiles(v)?);
                }
                k if PASSIVE.contains(&k) => {}
                other => {
                    return Err(ApiError::bad(
                        "unknown_parameter",
                        format!("unknown parameter `{other}`: use from, to, last, granularity, group_by, filter, measures, window, quantiles"),
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
        if let Some(w) = window_ms {
            if w % g != 0 || w / g > MAX_WINDOW_BUCKETS {
                return Err(ApiError::bad(
                    "bad_window",
                    format!(
                        "`window`={} must be a multiple of the granularity {granularity} and at most {MAX_WINDOW_BUCKETS} of its buckets: use e.g. window={}",
                        tally_core::time::format_ms(w),
                        tally_core::time::format_ms(g * (w / g).clamp(1, MAX_WINDOW_BUCKETS)),
                    ),
                ));
            }
        }
        // A window's first point reads the buckets of the window before it.
        let lead_in = window_ms.map_or(0, |w| w / g - 1);
        let buckets = granularity.bucket(to_ms - 1).div_euclid(g)
            - granularity.bucket(from_ms).div_euclid(g)
            + 1
            + lead_in;
        if buckets > max_buckets as i64 {
            return Err(ApiError::bad(
                "too_many_buckets",
                format!(
                    "the range holds {buckets} buckets of {granularity} (with the window's lead-in), over the limit of {max_buckets} (serve.max_buckets): narrow the range or the window, or use a coarser granularity"
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
            window_ms,
            percentiles: percentiles.unwrap_or_default(),
        })
    }

    /// The base-aligned range the fold reads: `[from, to)` of the base
    /// buckets asked for, widened back so that the first point's window is
    /// whole (`base_ms` is the view's granularity).
    pub fn read_range(&self, base_ms: i64) -> (i64, i64) {
        let (from, to) = super::plan::base_range(base_ms, self.from_ms, self.to_ms);
        match self.window_ms {
            Some(w) if from < to => {
                let g = self.granularity.as_ms();
                (self.granularity.bucket(from) + g - w, to)
            }
            _ => (from, to),
        }
    }
}

/// `quantiles`: a comma list of numbers in [0, 1], e.g. `0.5,0.9,0.99`.
fn parse_quantiles(v: &str) -> Result<Percentiles, ApiError> {
    let bad = |detail: String| {
        ApiError::bad(
            "bad_quantiles",
            format!("`quantiles`=`{v}`: {detail}: give a comma list of numbers from 0 to 1, e.g. quantiles=0.5,0.9,0.99"),
        )
    };
    let mut qs = Vec::new();
    for part in v.split(',').map(str::trim) {
        let q: f64 = part
            .parse()
            .map_err(|_| bad(format!("`{part}` is not a number")))?;
        if !(0.0..=1.0).contains(&q) {
            return Err(bad(format!("{part} is not between 0 and 1")));
        }
        // `-0` is 0.
        qs.push(q + 0.0);
    }
    if qs.len() > MAX_QUANTILES {
        return Err(bad(format!("at most {MAX_QUANTILES} quantiles")));
    }
    Ok(Percentiles::new(&qs))
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
