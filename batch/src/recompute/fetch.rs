//! An archive file's bytes for the Polars scan, fetched through the
//! project's object store client.
//!
//! Polars reads a Parquet file from one contiguous buffer, but a recompute
//! needs only a few of a file's columns (never `raw` or `props`, the bulk of
//! it). So a file is copied into an anonymous memory mapping of its full
//! size, and only its footer and the column chunks the plan reads are
//! fetched (ranged gets) and written there: the pages nobody writes are
//! never touched, so they cost no memory, and Polars reads exactly the
//! chunks it was given. A file without the promoted columns the view needs
//! (format v1, or a key no view used when it was written) is read whole
//! instead and rewritten in memory as a small v2 file of just those
//! columns, promoted from `props` ([`crate::archive_file::PropsView`]).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, ListArray, RecordBatch, StringArray};
use arrow_schema::{Field, Schema};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{ArrowWriter, ParquetRecordBatchStreamBuilder, ProjectionMask};
use polars_buffer::Buffer;

use super::inputs::Input;
use super::BatchError;
use crate::archive_file::{self, FileError};
use crate::promote::{Promote, PromotedKey, PropType, PropsView};

/// Files smaller than this are fetched whole: one request beats several.
const SPARSE_FROM: u64 = 4 << 20;

/// One archive file ready to scan: its bytes and where the view's fields are.
#[derive(Debug)]
pub(super) struct Source {
    pub path: String,
    pub bytes: Buffer<u8>,
    /// Per needed key, its columns in `bytes`, by type.
    pub keys: BTreeMap<String, Vec<(PropType, String)>>,
}

/// Fetch `input` with the envelope columns `envelope` and the promoted
/// columns of `keys`.
pub(super) async fn source(
    store: &Arc<dyn ObjectStore>,
    input: &Input,
    envelope: &[&str],
    keys: &[String],
) -> Result<Source, BatchError> {
    let listed: Option<BTreeMap<String, Vec<(PropType, String)>>> =
        input.promoted.as_ref().and_then(|p| {
            keys.iter()
                .map(|k| {
                    p.iter()
                        .find(|x| &x.key == k)
                        .map(|x| (k.clone(), x.columns.clone()))
                })
                .collect()
        });
    match listed {
        Some(keys) => {
            let mut columns: Vec<&str> = envelope.to_vec();
            columns.extend(keys.values().flatten().map(|(_, c)| c.as_str()));
            let bytes = sparse(store, input, &columns).await?;
            Ok(Source {
                path: input.path.clone(),
                bytes,
                keys,
            })
        }
        None => promoted_copy(store, input, envelope, keys).await,
    }
}

/// The file with only its footer and the chunks of `columns` filled in.
async fn sparse(
    store: &Arc<dyn ObjectStore>,
    input: &Input,
    columns: &[&str],
) -> Result<Buffer<u8>, BatchError> {
    let path = Path::from(input.path.as_str());
    let size = input.meta.size;
    if size < SPARSE_FROM {
        let bytes = store.get(&path).await?.bytes().await?;
        return Ok(Buffer::from_vec(bytes.to_vec()));
    }
    let schema = input.footer.file_metadata().schema_descr();
    let wanted: Vec<usize> = (0..schema.num_columns())
        .filter(|&i| columns.contains(&schema.column(i).path().string().as_str()))
        .collect();
    let tail = store.get_range(&path, size - 8..size).await?;
    let footer_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    // The footer first, then every wanted column chunk.
    let mut ranges: Vec<Range<u64>> = Vec::new();
    ranges.push(size.saturating_sub(8 + footer_len)..size);
    for rg in input.footer.row_groups() {
        for &c in &wanted {
            let (start, len) = rg.column(c).byte_range();
            ranges.push(start..start + len);
        }
    }
    let parts = store.get_ranges(&path, &ranges).await?;
    let mut map = memmap2::MmapMut::map_anon(size as usize)
        .map_err(|e| BatchError::Task(format!("mapping {} bytes for {}: {e}", size, input.path)))?;
    for (r, bytes) in ranges.iter().zip(parts) {
        map[r.start as usize..r.end as usize].copy_from_slice(&bytes);
    }
    let map = map
        .make_read_only()
        .map_err(|e| BatchError::Task(format!("mapping {}: {e}", input.path)))?;
    Ok(Buffer::from_owner(map))
}

/// The file read whole and written again in memory as a v2 file of the
/// envelope columns and `keys` promoted from `props`.
async fn promoted_copy(
    store: &Arc<dyn ObjectStore>,
    input: &Input,
    envelope: &[&str],
    keys: &[String],
) -> Result<Source, BatchError> {
    #[allow(deprecated)]
    let reader = ParquetObjectReader::new(store.clone(), Path::from(input.path.as_str()))
        .with_file_size(input.meta.size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    let roots: Vec<usize> = builder
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| envelope.contains(&f.name().as_str()) || f.name() == "props")
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let batches: Vec<RecordBatch> = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()?
        .try_collect()
        .await?;
    let path = input.path.clone();
    let envelope: Vec<String> = envelope.iter().map(|s| s.to_string()).collect();
    let keys = keys.to_vec();
    tokio::task::spawn_blocking(move || rewrite(&path, &batches, &envelope, &keys))
        .await
        .map_err(|e| BatchError::Task(e.to_string()))?
}

fn rewrite(
    path: &str,
    batches: &[RecordBatch],
    envelope: &[String],
    keys: &[String],
) -> Result<Source, BatchError> {
    let bad = |c: &str| {
        BatchError::File(FileError::Malformed {
            path: path.to_owned(),
            problem: format!("column `{c}` is missing or mistyped"),
        })
    };
    // The keys' types over the whole file, so every batch gets the same columns.
    let promote = Promote::keys(keys.iter().cloned());
    let mut counts: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for b in batches {
        let props = props_of(b).ok_or_else(|| bad("props"))?;
        let reject = b
            .column_by_name("reject")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| bad("reject"))?;
        let view = PropsView::of(props)?;
        for (k, c) in view.counts(reject).0 {
            if keys.iter().any(|x| x == k) {
                let e = counts.entry(k.to_owned()).or_default();
                for t in 0..4 {
                    e[t] += c[t];
                }
            }
        }
    }
    let counts_ref: BTreeMap<&str, [u64; 4]> =
        counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let promoted: Vec<PromotedKey> = promote.choose(&counts_ref, 0);
    let mut fields: Vec<Field> = Vec::new();
    let mut out: Option<ArrowWriter<Vec<u8>>> = None;
    for b in batches {
        let props = props_of(b).ok_or_else(|| bad("props"))?;
        let view = PropsView::of(props)?;
        let mut cols: Vec<ArrayRef> = Vec::new();
        fields.clear();
        for name in envelope {
            let (i, f) = b
                .schema()
                .column_with_name(name)
                .map(|(i, f)| (i, f.clone()))
                .ok_or_else(|| bad(name))?;
            fields.push(f);
            cols.push(b.column(i).clone());
        }
        for (k, c) in promoted
            .iter()
            .flat_map(|k| k.columns.iter())
            .zip(view.columns(&promoted))
        {
            fields.push(Field::new(&k.1, archive_file::arrow_type(k.0), true));
            cols.push(c);
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields.clone())), cols)?;
        if out.is_none() {
            out = Some(ArrowWriter::try_new(Vec::new(), batch.schema(), None)?);
        }
        if let Some(w) = out.as_mut() {
            w.write(&batch)?;
        }
    }
    let bytes = match out {
        Some(w) => w.into_inner()?,
        None => {
            // No rows: an empty file with the envelope columns.
            let fields: Vec<Field> = envelope
                .iter()
                .map(|n| Field::new(n, arrow_schema::DataType::Utf8, true))
                .collect();
            let _ = fields;
            return Err(bad("(no rows)"));
        }
    };
    Ok(Source {
        path: path.to_owned(),
        bytes: Buffer::from_vec(bytes),
        keys: promoted.into_iter().map(|k| (k.key, k.columns)).collect(),
    })
}

fn props_of(b: &RecordBatch) -> Option<&ListArray> {
    b.column_by_name("props")?
        .as_any()
        .downcast_ref::<ListArray>()
}

/// Decode the columns of `source` a plan reads (`envelope` and the
/// promoted columns of its keys) with the parquet crate, alone: the reason
/// when a page of them is unreadable. Only run when a day's plan failed.
pub(super) fn check(source: &Source, envelope: &[&str]) -> Result<(), String> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let bytes = bytes::Bytes::copy_from_slice(&source.bytes);
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
    let mut names: Vec<&str> = envelope.to_vec();
    names.extend(source.keys.values().flatten().map(|(_, c)| c.as_str()));
    let mask = ProjectionMask::columns(builder.parquet_schema(), names);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| e.to_string())?;
    for batch in reader {
        batch.map_err(|e| e.to_string())?;
    }
    Ok(())
}
