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
//! last offset it holds (see [`write_unless_covered`]); `tally.format` (`2`)
//! and `tally.promoted`, the promoted keys and their columns. Format v1 files
//! are the same without promoted columns and without the last two keys.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder,
    StringBuilder, StructBuilder,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, Encoding};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use tally_core::event::{decode, Limits, Scalar};
use tally_core::time::{day_of, EpochGrid};

use crate::promote::{self, Promote, PromotedKey, PropType, PropsView};

/// Key of the footer metadata that lists the days a file touches.
pub(crate) const DAYS_KEY: &str = "tally.days";
/// Key of the footer metadata that holds the file's last offset.
pub(crate) const LAST_OFFSET_KEY: &str = "tally.last_offset";

/// Errors writing or reading an archive file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("archive file `{path}` is malformed: {problem}")]
    Malformed { path: String, problem: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

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

/// Records of one archive file being assembled, decoded once on the way in.
#[derive(Debug)]
pub struct ArchiveRows {
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    kafka_ts: Int64Builder,
    epoch: Int64Builder,
    reject: StringBuilder,
    event_id: StringBuilder,
    event_type: StringBuilder,
    time_ms: Int64Builder,
    user_id: StringBuilder,
    props: ListBuilder<StructBuilder>,
    raw: BinaryBuilder,
    days: BTreeSet<i64>,
    rows: usize,
    /// First offset in this file (it names the file).
    pub first_offset: i64,
    /// Last offset added.
    last_offset: i64,
}

impl ArchiveRows {
    pub fn new(first_offset: i64) -> Self {
        ArchiveRows {
            topic: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            kafka_ts: Int64Builder::new(),
            epoch: Int64Builder::new(),
            reject: StringBuilder::new(),
            event_id: StringBuilder::new(),
            event_type: StringBuilder::new(),
            time_ms: Int64Builder::new(),
            user_id: StringBuilder::new(),
            props: ListBuilder::new(StructBuilder::from_fields(prop_fields(), 0)),
            raw: BinaryBuilder::new(),
            days: BTreeSet::new(),
            rows: 0,
            first_offset,
            last_offset: first_offset,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Decode and add one record (valid or not).
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        kafka_ts_ms: i64,
        clock: EpochGrid,
        limits: &Limits,
        value: &[u8],
    ) {
        self.last_offset = self.last_offset.max(offset);
        self.topic.append_value(topic);
        self.partition.append_value(partition);
        self.offset.append_value(offset);
        self.kafka_ts.append_value(kafka_ts_ms);
        self.epoch.append_value(clock.epoch_of(kafka_ts_ms));
        self.raw.append_value(value);
        self.rows += 1;
        match decode(value, kafka_ts_ms, limits) {
            Ok(e) => {
                self.reject.append_null();
                self.event_id.append_value(&e.event_id);
                self.event_type.append_value(&e.event_type);
                self.time_ms.append_value(e.time_ms);
                self.days.insert(day_of(e.time_ms));
                self.user_id.append_option(e.user_id.as_deref());
                let s = self.props.values();
                for (k, v) in &e.properties {
                    field::<StringBuilder>(s, 0).append_value(k);
                    let (st, i, f, b) = match v {
                        Scalar::Str(x) => (Some(x.as_ref()), None, None, None),
                        Scalar::Int(x) => (None, Some(*x), None, None),
                        Scalar::Float(x) => (None, None, Some(*x), None),
                        Scalar::Bool(x) => (None, None, None, Some(*x)),
                        Scalar::Null => (None, None, None, None),
                    };
                    field::<StringBuilder>(s, 1).append_option(st);
                    field::<Int64Builder>(s, 2).append_option(i);
                    field::<Float64Builder>(s, 3).append_option(f);
                    field::<BooleanBuilder>(s, 4).append_option(b);
                    s.append(true);
                }
                self.props.append(true);
            }
            Err(r) => {
                self.reject.append_value(r.code());
                self.event_id.append_null();
                self.event_type.append_null();
                self.time_ms.append_null();
                self.user_id.append_null();
                self.props.append(true);
            }
        }
    }

    /// The UTC days of the valid records' event times.
    pub fn days(&self) -> &BTreeSet<i64> {
        &self.days
    }

    /// Finish into one record batch, with the keys `promote` picks as
    /// columns; returns the promoted keys too.
    pub fn finish(
        &mut self,
        promote: &Promote,
    ) -> Result<(RecordBatch, Vec<PromotedKey>), FileError> {
        let reject = self.reject.finish();
        let props = self.props.finish();
        let view = PropsView::of(&props)?;
        let (counts, valid) = view.counts(&reject);
        let promoted = promote.choose(&counts, valid);
        let columns: Vec<(PropType, String)> = promoted
            .iter()
            .flat_map(|k| k.columns.iter().cloned())
            .collect();
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.topic.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.kafka_ts.finish()),
            Arc::new(self.epoch.finish()),
            Arc::new(reject),
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.time_ms.finish()),
            Arc::new(self.user_id.finish()),
        ];
        cols.extend(view.columns(&promoted));
        cols.push(Arc::new(props));
        cols.push(Arc::new(self.raw.finish()));
        Ok((RecordBatch::try_new(schema(&columns), cols)?, promoted))
    }
}

fn field<T: arrow_array::builder::ArrayBuilder>(s: &mut StructBuilder, i: usize) -> &mut T {
    s.field_builder::<T>(i)
        .expect("struct field builder of the declared type")
}

/// Write `rows` to `path` in `store` (multipart for large files) and return
/// once the object is durable.
pub async fn write(
    store: Arc<dyn ObjectStore>,
    path: &str,
    rows: &mut ArchiveRows,
    promote: &Promote,
) -> Result<(), FileError> {
    let days = rows
        .days()
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let last = rows.last_offset.to_string();
    let (batch, promoted) = rows.finish(promote)?;
    let mut meta = vec![
        KeyValue::new(DAYS_KEY.to_owned(), days),
        KeyValue::new(LAST_OFFSET_KEY.to_owned(), last),
    ];
    if !promote.is_legacy_v1() {
        meta.push(KeyValue::new(
            promote::FORMAT_KEY.to_owned(),
            "2".to_owned(),
        ));
        meta.push(KeyValue::new(
            promote::PROMOTED_KEY.to_owned(),
            serde_json::to_string(&promoted).unwrap_or_default(),
        ));
    }
    // Offsets and times rise within a file: delta-encoded they take a few
    // bits a row, where plain they would be among the largest columns a
    // recompute reads.
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(128 * 1024))
        .set_key_value_metadata(Some(meta));
    for c in ["offset", "kafka_ts_ms", "time_ms"] {
        props = props
            .set_column_dictionary_enabled(c.into(), false)
            .set_column_encoding(c.into(), Encoding::DELTA_BINARY_PACKED);
    }
    let props = props.build();
    let out = object_store::buffered::BufWriter::new(store, Path::from(path));
    let mut w = AsyncArrowWriter::try_new(out, batch.schema(), Some(props))?;
    w.write(&batch).await?;
    w.close().await?;
    Ok(())
}

/// What [`write_unless_covered`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// The object there already holds every record of these rows, and the
    /// epoch's records up to `last` (its last offset).
    Covered {
        last: i64,
    },
}

/// [`write`], unless the object at `path` already holds every record of
/// `rows`. A file holds the records of one partition and ingest epoch from
/// its first offset (its name) to its last, and the log does not change, so
/// a file of the same name whose last offset is at least ours is a superset.
///
/// This keeps an archiver that lost its partition without noticing (a
/// zombie) from replacing the new owner's durable file with a shorter one of
/// the same name, which would drop records below the owner's progress. What
/// is left is two writers checking at the same moment and the shorter one
/// landing last. A longer file still replaces a shorter one, as a crash
/// replay must.
pub(crate) async fn write_unless_covered(
    store: Arc<dyn ObjectStore>,
    path: &str,
    rows: &mut ArchiveRows,
    promote: &Promote,
) -> Result<Outcome, FileError> {
    if let Some(last) = last_offset_of(store.clone(), path).await? {
        if last >= rows.last_offset {
            return Ok(Outcome::Covered { last });
        }
    }
    write(store, path, rows, promote).await?;
    Ok(Outcome::Written)
}

/// The last offset of the durable file of `topic`/`partition` in `epoch`
/// that holds `offset`, if one does: the file with the greatest first offset
/// at or below `offset`, when its last offset is at least `offset`.
///
/// A file names only its first offset, so after a restart from inside a
/// file (a crash replay moved the progress past that file's first offset)
/// only this lookup knows that the records from there on are durable; a new
/// roll would write them again under another name.
pub(crate) async fn file_holding(
    store: Arc<dyn ObjectStore>,
    epoch: tally_core::time::Epoch,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<i64>, FileError> {
    use futures::TryStreamExt;
    let dir = Path::from(tally_store::paths::archive_partition_dir(
        epoch, topic, partition,
    ));
    let listed: Vec<_> = store.list(Some(&dir)).try_collect().await?;
    let holder = listed
        .iter()
        .filter_map(|m| tally_store::paths::parse_archive_file(m.location.as_ref()))
        .filter(|f| f.start_offset <= offset)
        .max_by_key(|f| f.start_offset);
    let Some(holder) = holder else {
        return Ok(None);
    };
    let path = tally_store::paths::archive_file(epoch, topic, partition, holder.start_offset);
    Ok(last_offset_of(store, &path)
        .await?
        .filter(|&last| last >= offset))
}

/// The last offset an existing archive file holds, from its footer; `None`
/// when there is no such object (or it predates the footer key).
async fn last_offset_of(store: Arc<dyn ObjectStore>, path: &str) -> Result<Option<i64>, FileError> {
    match store.head(&Path::from(path)).await {
        Ok(_) => {}
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    #[allow(deprecated)]
    let reader = parquet::arrow::async_reader::ParquetObjectReader::new(store, Path::from(path));
    let builder = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader).await?;
    Ok(last_offset_in(builder.metadata()))
}

/// The last offset listed in a file's footer metadata.
pub(crate) fn last_offset_in(meta: &parquet::file::metadata::ParquetMetaData) -> Option<i64> {
    let kv = meta.file_metadata().key_value_metadata()?;
    kv.iter()
        .find(|k| k.key == LAST_OFFSET_KEY)?
        .value
        .as_deref()?
        .parse()
        .ok()
}

/// The days listed in a file's footer metadata.
pub(crate) fn days_of(meta: &parquet::file::metadata::ParquetMetaData) -> Option<Vec<i64>> {
    let kv = meta.file_metadata().key_value_metadata()?;
    let v = kv.iter().find(|k| k.key == DAYS_KEY)?.value.as_deref()?;
    if v.is_empty() {
        return Some(Vec::new());
    }
    v.split(',').map(|d| d.parse().ok()).collect()
}

/// Read every record batch of an archive file (all columns).
pub async fn read_all(
    store: Arc<dyn ObjectStore>,
    path: &str,
) -> Result<Vec<RecordBatch>, FileError> {
    use futures::TryStreamExt;
    #[allow(deprecated)]
    let reader = parquet::arrow::async_reader::ParquetObjectReader::new(store, Path::from(path));
    let stream = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader)
        .await?
        .build()?;
    Ok(stream.try_collect().await?)
}

/// The `(topic, partition, offset)` of every record in `batches`.
pub fn coordinates(batches: &[RecordBatch]) -> Vec<(String, i32, i64)> {
    let mut out = Vec::new();
    for b in batches {
        let (Some(t), Some(p), Some(o)) = (
            b.column_by_name("topic")
                .and_then(|c| c.as_any().downcast_ref::<arrow_array::StringArray>()),
            b.column_by_name("partition")
                .and_then(|c| c.as_any().downcast_ref::<arrow_array::Int32Array>()),
            b.column_by_name("offset")
                .and_then(|c| c.as_any().downcast_ref::<arrow_array::Int64Array>()),
        ) else {
            continue;
        };
        for i in 0..b.num_rows() {
            out.push((t.value(i).to_owned(), p.value(i), o.value(i)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    const PATH: &str = "events/epoch=1/t=t/p=0/o=100.parquet";

    /// Rows of partition 0 at `offsets`, all in one epoch.
    fn rows(offsets: std::ops::RangeInclusive<i64>) -> ArchiveRows {
        let clock = EpochGrid::new(3_600_000);
        let mut r = ArchiveRows::new(*offsets.start());
        for o in offsets {
            r.push("t", 0, o, 1_000, clock, &Limits::default(), b"{}");
        }
        r
    }

    async fn offsets_stored(store: &Arc<dyn ObjectStore>) -> Vec<i64> {
        let batches = read_all(store.clone(), PATH).await.unwrap();
        coordinates(&batches)
            .into_iter()
            .map(|(_, _, o)| o)
            .collect()
    }

    #[tokio::test]
    async fn a_file_is_never_replaced_by_a_shorter_one_of_the_same_name() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let write = |r: std::ops::RangeInclusive<i64>| {
            let store = store.clone();
            async move {
                write_unless_covered(store, PATH, &mut rows(r), &Promote::default())
                    .await
                    .unwrap()
            }
        };
        assert_eq!(write(100..=199).await, Outcome::Written);
        assert_eq!(
            offsets_stored(&store).await,
            (100..=199).collect::<Vec<_>>()
        );
        // A stalled archiver's shorter roll of the same records: kept out.
        assert_eq!(write(100..=149).await, Outcome::Covered { last: 199 });
        assert_eq!(
            offsets_stored(&store).await,
            (100..=199).collect::<Vec<_>>()
        );
        // The same file again (a crash replay): nothing to do.
        assert_eq!(write(100..=199).await, Outcome::Covered { last: 199 });
        // A longer one replaces it, as a crash replay that read further must.
        assert_eq!(write(100..=249).await, Outcome::Written);
        assert_eq!(
            offsets_stored(&store).await,
            (100..=249).collect::<Vec<_>>()
        );
    }
}
