//! The master-dataset file format (v2): one Parquet file of Kafka records.
//!
//! Every record is kept, valid or not (the raw bytes are the truth). Columns:
//!
//! | column | type | holds |
//! |---|---|---|
//! | `topic`, `partition`, `offset` | Utf8, Int32, Int64 | Kafka coordinates (the de-duplication key) |
//! | `kafka_ts_ms`, `epoch` | Int64, Int64 | Kafka timestamp and its ingest epoch |
//! | `reject` | Utf8, null when valid | [`tally_core::event::Reject::code`] |
//! | `event_id`, `event_type`, `user_id` | Utf8, nullable | decoded envelope |
//! | `time_ms` | Int64, nullable | event time |
//! | `properties.<key>` | Utf8, Int64, Float64 or Boolean, nullable | promoted properties ([`crate::promote`]) |
//! | `props` | List<Struct<key, str, int, float, bool>> | every property, typed: no JSON parsing when read |
//! | `raw` | Binary | the record's value as received |
//!
//! The file's key-value metadata holds `tally.days`: the UTC days (comma
//! separated) of the event times of its valid records, so the batch can tell
//! which days a file touches from the footer alone; `tally.last_offset`, the
//! last offset it holds (see [`covering`]); `tally.format` (`2`)
//! and `tally.promoted`, the promoted keys and their columns. Format v1 files
//! are the same without promoted columns and without the last two keys.
//!
//! This file holds the schema and the footer keys; [`ArchiveRows`]
//! (`rows.rs`) assembles a file's records, `object.rs` writes, finds and
//! reads the objects, `error.rs` says what can fail.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};

use crate::promote::PropType;

/// Key of the footer metadata that lists the days a file touches.
pub(crate) const DAYS_KEY: &str = "tally.days";
/// Key of the footer metadata that holds the file's last offset.
pub(crate) const LAST_OFFSET_KEY: &str = "tally.last_offset";

fn prop_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("str", DataType::Utf8, true),
        Field::new("int", DataType::Int64, true),
        Field::new("float", DataType::Float64, true),
        Field::new("bool", DataType::Boolean, true),
    ])
}

/// The Arrow schema of an archive file with the promoted `columns`.
pub fn schema(columns: &[(PropType, String)]) -> SchemaRef {
    let prop = Field::new("item", DataType::Struct(prop_fields()), true);
    let mut fields = vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("kafka_ts_ms", DataType::Int64, false),
        Field::new("epoch", DataType::Int64, false),
        Field::new("reject", DataType::Utf8, true),
        Field::new("event_id", DataType::Utf8, true),
        Field::new("event_type", DataType::Utf8, true),
        Field::new("time_ms", DataType::Int64, true),
        Field::new("user_id", DataType::Utf8, true),
    ];
    for (ty, name) in columns {
        fields.push(Field::new(name, arrow_type(*ty), true));
    }
    fields.push(Field::new("props", DataType::List(Arc::new(prop)), false));
    fields.push(Field::new("raw", DataType::Binary, false));
    Arc::new(Schema::new(fields))
}

/// The Arrow type of a promoted column of `ty`.
pub(crate) fn arrow_type(ty: PropType) -> DataType {
    match ty {
        PropType::Str => DataType::Utf8,
        PropType::Int => DataType::Int64,
        PropType::Float => DataType::Float64,
        PropType::Bool => DataType::Boolean,
    }
}

pub(crate) mod error;
mod object;
mod rows;

pub use error::FileError;
pub use object::{coordinates, read_all, write};
pub(crate) use object::{covering, days_of, file_holding, last_offset_in};
pub use rows::ArchiveRows;
