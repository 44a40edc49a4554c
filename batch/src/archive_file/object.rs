//! Archive files as objects: written whole (never replaced by a shorter
//! file of the same name), found by the offset they hold, their footers
//! read, and read back.
//!
//! Guarantees: [`write`] returns once the object is durable; a zombie's
//! shorter roll never replaces a longer durable file ([`covering`]);
//! the footer is the only thing read to know a file's days and last offset.

use std::sync::Arc;

use arrow_array::{Array, RecordBatch};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, Encoding};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::{ArchiveRows, FileError, DAYS_KEY, LAST_OFFSET_KEY};
use crate::promote::{self, Promote};

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
    // A value of each record: a dictionary would fill with values seen once,
    // and the minimum and maximum of raw JSON or of ids prune nothing. Both
    // compared every value (a tenth of the archiver's encoding time).
    for c in ["raw", "event_id"] {
        props = props
            .set_column_dictionary_enabled(c.into(), false)
            .set_column_statistics_enabled(c.into(), EnabledStatistics::None);
    }
    let props = props.build();
    let out = object_store::buffered::BufWriter::new(store, Path::from(path));
    let mut w = AsyncArrowWriter::try_new(out, batch.schema(), Some(props))?;
    w.write(&batch).await?;
    w.close().await?;
    Ok(())
}

/// The last offset of the object at `path` when it already holds every
/// record of `rows`, `None` when it does not or there is none: then `rows`
/// are not written. A file holds the records of one partition and ingest
/// epoch from its first offset (its name) to its last, and the log does not
/// change, so a file of the same name whose last offset is at least ours is
/// a superset.
///
/// This keeps an archiver that lost its partition without noticing (a
/// zombie) from replacing the new owner's durable file with a shorter one of
/// the same name, which would drop records below the owner's progress. What
/// is left is two writers checking at about the same moment and the shorter
/// one landing last. A longer file still replaces a shorter one, as a crash
/// replay must.
pub(crate) async fn covering(
    store: Arc<dyn ObjectStore>,
    path: &str,
    rows: &ArchiveRows,
) -> Result<Option<i64>, FileError> {
    Ok(last_offset_of(store, path)
        .await?
        .filter(|&last| last >= rows.last_offset))
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
    use object_store::memory::InMemory;
    use tally_core::event::Limits;
    use tally_core::time::EpochGrid;

    use super::*;

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
        // As a roll does: written unless covered; the covering last offset.
        let write = |r: std::ops::RangeInclusive<i64>| {
            let store = store.clone();
            async move {
                let mut rows = rows(r);
                let last = covering(store.clone(), PATH, &rows).await.unwrap();
                if last.is_none() {
                    super::write(store, PATH, &mut rows, &Promote::default())
                        .await
                        .unwrap();
                }
                last
            }
        };
        assert_eq!(write(100..=199).await, None);
        assert_eq!(
            offsets_stored(&store).await,
            (100..=199).collect::<Vec<_>>()
        );
        // A stalled archiver's shorter roll of the same records: kept out.
        assert_eq!(write(100..=149).await, Some(199));
        assert_eq!(
            offsets_stored(&store).await,
            (100..=199).collect::<Vec<_>>()
        );
        // The same file again (a crash replay): nothing to do.
        assert_eq!(write(100..=199).await, Some(199));
        // A longer one replaces it, as a crash replay that read further must.
        assert_eq!(write(100..=249).await, None);
        assert_eq!(
            offsets_stored(&store).await,
            (100..=249).collect::<Vec<_>>()
        );
    }
}
