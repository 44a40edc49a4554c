//! Snapshot files: the schema, with its one writer ([`encode`], then [`put`]) and its one
//! reader ([`decode`], [`read_rows`]).
//!
//! A snapshot file (`views/<view>/run=<id>/g=<level>/day=<d>.parquet`,
//! listed by the view's [`crate::manifest`]) has one row per (bucket, group)
//! of one UTC day at one roll-up level, sorted by bucket, and these columns:
//!
//! | column | type | holds |
//! |---|---|---|
//! | `bucket_ms` | Int64 | bucket start, epoch ms, at the file's level |
//! | `d:<path>` | Utf8, nullable | one per dimension, e.g. `d:properties.page` |
//! | `m:<name>` | UInt64 | `count` |
//! | `m:<name>:int`, `m:<name>:float` | Decimal128(38, 0), Float64 | `sum`, integer and float parts |
//! | `m:<name>` | Float64, nullable | `min`, `max` |
//! | `m:<name>` | Binary | `distinct`: Redis HyperLogLog bytes ([`tally_core::hll`]) |
//! | `m:<name>` | List<Struct{b: Int32, n: UInt64}> | `quantiles`: the sketch's occupied buckets ([`tally_core::quantile`]), by code `b` ascending (value order), with their counts `n`; `b` is `0` for zero, `±(i + 34601)` for the bucket `i` of a positive or negative value, whose values `x` satisfy `γ^(i-1) < \|x\| ≤ γ^i`, `γ = 1.01/0.99`, and are answered as `2γ^i/(γ+1)` |
//!
//! Both sides go through [`DayBatch`], the columns in exactly these types.
//! Guarantees: the writer writes only a batch that matches the view's
//! schema; the reader accepts every file a Tally version wrote (an `Int64`
//! integer sum from before exact `i128` sums, and encodings a writer may
//! choose: large or view strings, signed counts) and reads a column the file
//! lacks as the identity of its measure (no value, zero, an empty sketch);
//! a file it cannot read is a [`SnapshotError`] naming the file and the
//! column, never a panic.

mod read;
mod write;

use std::sync::Arc;

use arrow_array::{
    Array, BinaryArray, Decimal128Array, Float64Array, Int32Array, Int64Array, ListArray,
    StringArray, StructArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Fields, Schema};
use tally_core::agg::AggKind;
use tally_core::hll::{Hll, HllError};
use tally_core::quantile::{Bucket, QuantileSketch};
use tally_core::view::ViewDef;

pub use read::{check_footer, decode, fetch, read_rows, DayReader, Row};
pub use write::{encode, put};

/// The type of a sum's integer part: exact `i128` ([`tally_core::agg`]).
pub const SUM_INT_TYPE: DataType = DataType::Decimal128(38, 0);

/// The fields of a quantile sketch's entries: bucket code `b`, count `n`.
pub fn quantile_fields() -> Fields {
    Fields::from(vec![
        Field::new("b", DataType::Int32, false),
        Field::new("n", DataType::UInt64, false),
    ])
}

/// The type of a `quantiles` column: `List<Struct{b: Int32, n: UInt64}>`.
pub fn quantile_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(quantile_fields()),
        false,
    )))
}

/// Column names of a snapshot file.
pub mod columns {
    use tally_core::agg::AggKind;
    use tally_core::view::{FieldPath, MeasureDef};

    pub const BUCKET: &str = "bucket_ms";

    pub fn dimension(path: &FieldPath) -> String {
        format!("d:{}", path.as_string())
    }

    /// The columns of one measure, in order.
    pub fn measure(m: &MeasureDef) -> Vec<String> {
        match m.agg {
            AggKind::Sum => vec![format!("m:{}:int", m.name), format!("m:{}:float", m.name)],
            _ => vec![format!("m:{}", m.name)],
        }
    }
}

/// The Arrow schema of `view`'s snapshot files.
pub fn schema(view: &ViewDef) -> Arc<Schema> {
    let mut fields = vec![Field::new(columns::BUCKET, DataType::Int64, false)];
    for d in &view.dimensions {
        fields.push(Field::new(columns::dimension(d), DataType::Utf8, true));
    }
    for m in &view.measures {
        let names = columns::measure(m);
        match m.agg {
            AggKind::Count => fields.push(Field::new(&names[0], DataType::UInt64, false)),
            AggKind::Sum => {
                fields.push(Field::new(&names[0], SUM_INT_TYPE, false));
                fields.push(Field::new(&names[1], DataType::Float64, false));
            }
            AggKind::Min | AggKind::Max => {
                fields.push(Field::new(&names[0], DataType::Float64, true))
            }
            AggKind::Distinct => fields.push(Field::new(&names[0], DataType::Binary, false)),
            AggKind::Quantiles => fields.push(Field::new(&names[0], quantile_type(), false)),
        }
    }
    Arc::new(Schema::new(fields))
}

/// Rows of a snapshot file, column by column, in the schema's types.
///
/// As read: `bucket` has no nulls (rows without a bucket are not rows of the
/// contract and are dropped), counts and sums have no nulls (read as zero).
#[derive(Debug, Clone)]
pub struct DayBatch {
    /// Bucket start of each row, epoch ms.
    pub bucket: Int64Array,
    /// One per dimension of the view, in definition order; null: the event
    /// had no value.
    pub dimensions: Vec<StringArray>,
    /// One per measure of the view, in definition order.
    pub measures: Vec<MeasureArray>,
}

/// One measure's values.
#[derive(Debug, Clone)]
pub enum MeasureArray {
    Count(UInt64Array),
    /// The integer part ([`SUM_INT_TYPE`]) and the float part.
    Sum {
        int: Decimal128Array,
        float: Float64Array,
    },
    /// `min` or `max`: null where the group had no input.
    Extreme(Float64Array),
    /// Redis HyperLogLog bytes ([`sketch`] reads one); null reads as empty.
    Distinct(BinaryArray),
    /// Quantile sketches, [`quantile_type`] ([`quantile_entries`] reads
    /// one row, [`quantile_array`] builds the column); null reads as empty.
    Quantiles(ListArray),
}

impl DayBatch {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.bucket.len()
    }
}

/// The sketch of row `r` (an empty one where null).
pub fn sketch(values: &BinaryArray, r: usize) -> Result<Hll, HllError> {
    if values.is_null(r) {
        return Ok(Hll::new());
    }
    Hll::from_redis_bytes(values.value(r))
}

/// The entries `(b, n)` of row `r` of a quantiles column, and the sketch
/// they make; a code outside the sketch's range is an error naming it.
pub fn quantile_sketch(values: &ListArray, r: usize) -> Result<QuantileSketch, String> {
    let mut s = QuantileSketch::new();
    for (b, n) in quantile_entries(values, r)? {
        s.add_count(b, n);
    }
    Ok(s)
}

/// The entries of row `r` of a quantiles column (none where null).
pub fn quantile_entries(values: &ListArray, r: usize) -> Result<Vec<(Bucket, u64)>, String> {
    if values.is_null(r) {
        return Ok(Vec::new());
    }
    let row = values.value(r);
    let st = row
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or("entries are not structs")?;
    let b = st
        .column_by_name("b")
        .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
        .ok_or("no Int32 field `b`")?;
    let n = st
        .column_by_name("n")
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        .ok_or("no UInt64 field `n`")?;
    (0..st.len())
        .filter(|&i| st.is_valid(i))
        .map(|i| {
            Bucket::from_code(b.value(i))
                .map(|bucket| (bucket, n.value(i)))
                .ok_or_else(|| format!("bucket code {} is out of range", b.value(i)))
        })
        .collect()
}

/// A quantiles column from each row's entries `(code, count)`, codes
/// ascending: what the writer stores (the batch builds it from its codes
/// and counts lists).
pub fn quantile_array<'a>(rows: impl IntoIterator<Item = (&'a [i32], &'a [u64])>) -> ListArray {
    use arrow_array::builder::{
        ArrayBuilder, Int32Builder, ListBuilder, StructBuilder, UInt64Builder,
    };
    let b: Box<dyn ArrayBuilder> = Box::new(Int32Builder::new());
    let n: Box<dyn ArrayBuilder> = Box::new(UInt64Builder::new());
    let entries = StructBuilder::new(quantile_fields(), vec![b, n]);
    let DataType::List(item) = quantile_type() else {
        unreachable!("quantile_type is a list")
    };
    let mut list = ListBuilder::new(entries).with_field(item);
    for (codes, counts) in rows {
        let st = list.values();
        for (&b, &n) in codes.iter().zip(counts) {
            if let Some(f) = st.field_builder::<Int32Builder>(0) {
                f.append_value(b);
            }
            if let Some(f) = st.field_builder::<UInt64Builder>(1) {
                f.append_value(n);
            }
            st.append(true);
        }
        list.append(true);
    }
    list.finish()
}

/// Why a snapshot file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("snapshot file {path}: {source}")]
    Parquet {
        path: String,
        source: parquet::errors::ParquetError,
    },
    #[error("snapshot file {path}: column `{column}` {problem}")]
    Column {
        path: String,
        column: String,
        problem: String,
    },
    /// The writer was given columns that do not match the view's schema.
    #[error("snapshot file {path}: the columns do not match the view's schema: {problem}")]
    Schema { path: String, problem: String },
    #[error("writing snapshot file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests;
