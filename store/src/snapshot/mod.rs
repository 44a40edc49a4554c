//! Snapshot files: the schema, with its one writer ([`write()`]) and its one
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
    Array, BinaryArray, Decimal128Array, Float64Array, Int64Array, StringArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use tally_core::agg::AggKind;
use tally_core::hll::{Hll, HllError};
use tally_core::view::ViewDef;

pub use read::{check_footer, decode, fetch, read_rows, DayReader, Row};
pub use write::write;

/// The type of a sum's integer part: exact `i128` ([`tally_core::agg`]).
pub const SUM_INT_TYPE: DataType = DataType::Decimal128(38, 0);

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
