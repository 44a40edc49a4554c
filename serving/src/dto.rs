//! The API's wire types: what the JSON answers hold, documented for
//! OpenAPI (utoipa). Shared by the handlers, the query executor and the
//! answer cache, so none of them imports another.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use tally_core::agg::Agg;
use tally_core::quantile::QuantileSketch;
use utoipa::ToSchema;

/// The percentiles a query asks of its quantiles measures (`quantiles=`):
/// each `q` in [0, 1], ascending, with the label it is answered under
/// (the shortest decimal text of `q`: `0.5`, `0.99`, `1`).
#[derive(Debug, Clone, PartialEq)]
pub struct Percentiles {
    pub qs: Box<[f64]>,
    pub labels: Arc<[String]>,
}

impl Percentiles {
    /// The default: p50, p90 and p99.
    pub const DEFAULT: [f64; 3] = [0.5, 0.9, 0.99];

    /// `qs` (each in [0, 1]) ascending, without repeats, labelled.
    pub fn new(qs: &[f64]) -> Percentiles {
        let mut qs = qs.to_vec();
        qs.sort_by(f64::total_cmp);
        qs.dedup();
        let labels = qs.iter().map(|q| q.to_string()).collect();
        Percentiles {
            qs: qs.into(),
            labels,
        }
    }

    /// Whether every asked percentile is within a tenth of an end (p90 and
    /// up, or p10 and down): a walk from that end answers them in a few
    /// buckets, so a cell's inputs need not be added up to answer them.
    pub fn near_an_end(&self) -> bool {
        self.qs.iter().all(|&q| q >= 0.9) || self.qs.iter().all(|&q| q <= 0.1)
    }
}

impl Default for Percentiles {
    fn default() -> Self {
        Percentiles::new(&Percentiles::DEFAULT)
    }
}

/// The answered percentiles of one quantiles measure: per [`Percentiles`]
/// label, the value (`None`: no input).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantileValues {
    pub labels: Arc<[String]>,
    pub values: Box<[Option<f64>]>,
}

/// The final value of one measure in an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Final {
    Count(u64),
    /// An exact integer part and a float part.
    Sum(i128, f64),
    /// A min or max; `None` without input.
    Extreme(Option<f64>),
    /// A distinct estimate.
    Distinct(u64),
    /// The percentiles asked of a quantile sketch (held here, not behind
    /// another pointer: one allocation per answered cell).
    Quantiles(QuantileValues),
}

impl Final {
    /// The final value of an aggregate; a quantile sketch answers the
    /// percentiles `p`.
    pub fn of(agg: &Agg, p: &Percentiles) -> Final {
        match agg {
            Agg::Count(c) => Final::Count(*c),
            Agg::Sum { int, float } => Final::Sum(*int, *float),
            Agg::Min(v) | Agg::Max(v) => Final::Extreme(*v),
            Agg::Distinct(h) => Final::Distinct(h.count()),
            Agg::Quantiles(s) => Final::of_quantiles(s, p),
        }
    }

    /// The percentiles `p` of a quantile sketch.
    pub fn of_quantiles(s: &QuantileSketch, p: &Percentiles) -> Final {
        Final::quantiles(p, s.quantiles(&p.qs))
    }

    /// The answered percentiles `values`, one per `p.qs`.
    pub fn quantiles(p: &Percentiles, values: Vec<Option<f64>>) -> Final {
        Final::Quantiles(QuantileValues {
            labels: p.labels.clone(),
            values: values.into(),
        })
    }

    /// Whether the value is the identity of its measure (nothing to show).
    pub fn is_nothing(&self) -> bool {
        match self {
            Final::Count(c) | Final::Distinct(c) => *c == 0,
            Final::Sum(int, float) => *int == 0 && *float == 0.0,
            Final::Extreme(v) => v.is_none(),
            Final::Quantiles(q) => q.values.iter().all(Option::is_none),
        }
    }
}

impl Serialize for Final {
    /// Integers stay integers (an integer sum past 64 bits becomes the
    /// nearest double); a min or max without input, or a non-finite value,
    /// is null.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let float = |s: S, f: f64| {
            if f.is_finite() {
                s.serialize_f64(f)
            } else {
                s.serialize_none()
            }
        };
        match *self {
            Final::Quantiles(ref q) => {
                let mut map = s.serialize_map(Some(q.labels.len()))?;
                for (label, v) in q.labels.iter().zip(q.values.iter()) {
                    map.serialize_entry(label, &v.filter(|v| v.is_finite()))?;
                }
                map.end()
            }
            Final::Count(c) | Final::Distinct(c) => s.serialize_u64(c),
            Final::Sum(int, 0.0) => match (i64::try_from(int), u64::try_from(int)) {
                (Ok(i), _) => s.serialize_i64(i),
                (_, Ok(u)) => s.serialize_u64(u),
                _ => float(s, int as f64),
            },
            Final::Sum(int, f) => float(s, int as f64 + f),
            Final::Extreme(Some(v)) => float(s, v),
            Final::Extreme(None) => s.serialize_none(),
        }
    }
}

/// Measure name → value, a JSON object in name order.
#[derive(Debug, Clone, Default)]
pub struct Values {
    /// The measure names in name order, each with its position in `values`.
    pub names: Arc<[(String, usize)]>,
    pub values: Box<[Final]>,
}

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.names.len()))?;
        for (name, i) in self.names.iter() {
            if let Some(v) = self.values.get(*i) {
                map.serialize_entry(name, v)?;
            }
        }
        map.end()
    }
}

/// A measure of a view.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MeasureInfo {
    pub name: String,
    /// count, sum, min, max, distinct or quantiles.
    pub agg: String,
    pub field: Option<String>,
}

/// A view as the API describes it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ViewInfo {
    pub name: String,
    pub dimensions: Vec<String>,
    /// The base granularity; queries may use any multiple of it.
    pub granularity: String,
    pub measures: Vec<MeasureInfo>,
    /// The cut of the loaded snapshot (null: no batch run yet).
    pub cut: Option<i64>,
    pub snapshot_run_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ViewsResponse {
    pub views: Vec<ViewInfo>,
}

/// How fresh the data behind an answer is.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Freshness {
    /// The snapshot run merged in (null: none).
    pub snapshot_run_id: Option<String>,
    /// When that run was published, epoch ms.
    pub snapshot_created_ms: Option<i64>,
    /// When the in-memory copy of the speed layer was last synced with
    /// Redis, epoch ms (null: never).
    pub speed_read_ms: Option<i64>,
    /// Speed-layer slices (epoch ≥ cut, day in range) merged in.
    pub speed_slices: usize,
    /// Speed-layer fields that did not parse and were skipped.
    pub speed_skipped: usize,
}

/// The answer to a view query.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct QueryResponse {
    pub view: String,
    /// Base buckets starting in [from_ms, to_ms) are included.
    pub from_ms: i64,
    pub to_ms: i64,
    pub granularity: String,
    /// The rolling window (`window`), when asked for: each point then
    /// aggregates the base buckets starting in `[t + granularity - window,
    /// t + granularity)` (and before `to_ms`), read before `from_ms` where
    /// the window reaches back; totals then cover every base bucket the
    /// points read, `[read_from_ms, to_ms)`, each once.
    pub window: Option<String>,
    /// With a window: where the read starts (the first point's window).
    pub read_from_ms: Option<i64>,
    pub group_by: Vec<String>,
    /// The version (content hash) of each lookup table the query uses
    /// (`dimension@lookup`); null: the table was never loaded (every value
    /// then maps to the table's `missing`, and `degraded` says `lookup`).
    pub lookups: BTreeMap<String, Option<String>>,
    pub measures: Vec<String>,
    /// Speed slices of epochs ≥ cut are merged with the snapshot (null: no snapshot, all slices).
    pub cut: Option<i64>,
    pub freshness: Freshness,
    /// Components that were down or failed: `redis`, `store`, `lookup`. Empty when complete.
    pub degraded: Vec<String>,
    /// True when the view has `dedup = "event_id"` and the answer includes
    /// speed slices (epochs ≥ cut): the speed layer removes only the
    /// duplicates its bounded window saw, so those may still count a
    /// producer's retry twice, until the batch run that covers their epochs
    /// (exact). False otherwise.
    pub speed_may_hold_duplicates: bool,
    /// Groups with data; `series` holds at most max_groups of them.
    pub groups_total: usize,
    pub groups_returned: usize,
    /// True when groups were cut to max_groups (largest first by the first measure).
    pub overflow: bool,
    pub series: Vec<Series>,
    /// Every group over the whole range (distinct: HyperLogLog union,
    /// quantiles: the percentiles of the merged sketch).
    #[schema(schema_with = values_schema)]
    pub totals: Values,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ViewStatus {
    pub name: String,
    pub cut: Option<i64>,
    pub last_run_id: Option<String>,
    pub last_run_created_ms: Option<i64>,
    /// now - last_run_created_ms.
    pub snapshot_age_ms: Option<i64>,
    pub snapshot_rows: u64,
    pub snapshot_days: usize,
    /// False when the snapshot was computed with another view definition.
    pub definition_matches: bool,
    /// Speed-layer slices present in Redis (any epoch).
    pub speed_slices: Option<u64>,
    pub store_error: Option<String>,
    /// Archive files the last batch run could not read and left out: the
    /// snapshot lacks their records.
    pub skipped_files: Vec<SkippedFile>,
}

/// An archive file a batch run left out.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SkippedFile {
    pub path: String,
    pub size: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// Offsets below this are in the master dataset.
    pub archived_to: i64,
    /// The end offset the archiver last saw.
    pub high_watermark: i64,
    pub observed_ms: i64,
    /// Next offset the speed layer applies (from Redis).
    pub speed_offset: Option<i64>,
    /// high_watermark - speed_offset: how far the speed layer trails (estimate).
    pub speed_lag: Option<i64>,
    pub archive_lag: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatusResponse {
    pub now_ms: i64,
    pub started_ms: i64,
    pub degraded: Vec<String>,
    /// The archiver's published cut (archive/cut.json).
    pub archive_cut: Option<i64>,
    pub archive_cut_decided_ms: Option<i64>,
    pub views: Vec<ViewStatus>,
    pub partitions: Vec<PartitionStatus>,
    /// Speed-layer offsets per `topic/partition`.
    pub speed_offsets: BTreeMap<String, i64>,
    pub last_manifest_poll_ms: Option<i64>,
    /// Decoded snapshot data held in memory (at most `serve.cache_bytes`).
    pub day_cache_bytes: usize,
    /// When the in-memory copy of the speed layer was last synced (epoch ms).
    pub speed_synced_ms: Option<i64>,
    /// The lookup tables (`[[lookup]]`).
    pub lookups: Vec<LookupStatus>,
}

/// A lookup table as the serving role holds it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LookupStatus {
    pub name: String,
    pub path: String,
    /// The content hash of the version in use (null: never loaded).
    pub version: Option<String>,
    pub keys: usize,
    /// When that version was read, epoch ms.
    pub loaded_ms: Option<i64>,
    /// Why the last read failed (the previous version, if any, still serves).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecomputeResponse {
    pub accepted: bool,
    pub detail: String,
}

/// One point of a series.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Point {
    /// Bucket start, epoch ms.
    pub t: i64,
    /// Measure name → value (null: no input, for min/max); a quantiles
    /// measure's value is an object, percentile → value, e.g.
    /// `{"0.5": 12.1, "0.99": 80.3}`.
    #[schema(schema_with = values_schema)]
    pub values: Values,
}

/// One group's series.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Series {
    /// Dimension → value (null: absent) for each `group_by` dimension.
    #[schema(value_type = BTreeMap<String, Option<String>>)]
    pub group: BTreeMap<String, Option<String>>,
    pub points: Vec<Point>,
    /// This group over the whole range.
    #[schema(schema_with = values_schema)]
    pub totals: Values,
}

/// A recompute request (`POST /api/v1/recompute`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecomputeRequest {
    /// The view to recompute; all views when absent.
    pub view: Option<String>,
    /// Start of the event-time range: RFC 3339 text or epoch ms (integer).
    #[schema(schema_with = time_bound_schema)]
    pub from: Option<serde_json::Value>,
    /// End of the event-time range: RFC 3339 text or epoch ms (integer).
    #[schema(schema_with = time_bound_schema)]
    pub to: Option<serde_json::Value>,
}

/// Measure name → value: a number or null, or for a quantiles measure an
/// object of percentile → number or null.
fn values_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{
        AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
    };
    use utoipa::openapi::RefOr;
    let number = || {
        RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([Type::Number, Type::Null]))
                .build(),
        ))
    };
    let percentiles = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "a quantiles measure: percentile (e.g. \"0.99\") → value",
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(number())))
        .build();
    let value = OneOfBuilder::new()
        .item(number())
        .item(RefOr::T(Schema::Object(percentiles)))
        .build();
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::OneOf(
                value,
            )))))
            .build(),
    )
}

/// `from`/`to` of a recompute: RFC 3339 text, epoch milliseconds, or null/absent.
fn time_bound_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(
                    "RFC 3339, e.g. 2024-01-01T00:00:00Z, or epoch ms as text",
                )),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .description(Some("epoch milliseconds")),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build()
        .into()
}
