//! The archive files a run reads: listed below the cut, each with what its
//! footer says (days touched, last offset, promoted keys, the range of
//! coordinates it holds), and which of them share records.
//!
//! Archive files hold runs of offsets of one partition, so two files can
//! hold the same record only if their (topic, partition, offset) ranges
//! overlap. [`overlapping`] finds those from the footers' statistics alone:
//! only they need row-level de-duplication. A file whose statistics are
//! missing is taken to overlap every other file.
//!
//! A file whose footer cannot be read (truncated, not Parquet) or lacks
//! Tally's footer metadata is left out and returned as skipped, so that one
//! bad object does not stop every run: the runs go on with the rest and
//! record it (run summary, manifest, metric). The file itself is left in
//! place: the master dataset is never deleted from. A store that does not
//! answer still fails the run: a file is skipped for what it holds, never for
//! a network error.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore};
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;
use tally_core::time::Epoch;
use tally_store::manifest::{InputFile, SkippedFile};
use tally_store::paths;

use super::BatchError;
use crate::archive_file;
use crate::promote::{self, PromotedKey};
use tally_store::object as store;

/// An archive file of an epoch below the cut.
#[derive(Debug, Clone)]
pub(super) struct Input {
    pub path: String,
    pub topic: String,
    pub meta: ObjectMeta,
    pub days: Vec<i64>,
    /// The footer's last offset.
    pub last_offset: Option<i64>,
    /// The promoted keys (`None`: a format v1 file).
    pub promoted: Option<Vec<PromotedKey>>,
    pub footer: Arc<ParquetMetaData>,
    /// The coordinates it holds, from the column statistics.
    pub span: Option<Span>,
}

/// The range of coordinates a file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Span {
    pub topic: String,
    pub partitions: (i32, i32),
    pub offsets: (i64, i64),
}

impl Input {
    /// What the manifest records of this input.
    pub(super) fn record(&self) -> InputFile {
        InputFile {
            path: self.path.clone(),
            size: self.meta.size,
            e_tag: self.meta.e_tag.clone(),
            last_offset: self.last_offset,
        }
    }

    /// Records in the file.
    pub(super) fn rows(&self) -> u64 {
        self.footer.file_metadata().num_rows().max(0) as u64
    }

    fn overlaps(&self, other: &Input) -> bool {
        match (&self.span, &other.span) {
            (Some(a), Some(b)) => {
                a.topic == b.topic
                    && a.partitions.0 <= b.partitions.1
                    && b.partitions.0 <= a.partitions.1
                    && a.offsets.0 <= b.offsets.1
                    && b.offsets.0 <= a.offsets.1
            }
            _ => true,
        }
    }
}

/// What reading a file's footer gave.
enum Listed {
    Read(Box<Input>),
    Skipped(SkippedFile),
}

/// Archive files of epochs `< cut`, with their footers, sorted by path, and
/// the files left out because their footer is unreadable.
pub(super) async fn list(
    store: &Arc<dyn ObjectStore>,
    cut: Epoch,
) -> Result<(Vec<Input>, Vec<SkippedFile>), BatchError> {
    let metas = store::list(store.as_ref(), paths::EVENTS_ROOT).await?;
    let candidates: Vec<(ObjectMeta, paths::ArchiveFile)> = metas
        .into_iter()
        .filter_map(|m| {
            let f = paths::parse_archive_file(m.location.as_ref())?;
            (f.epoch < cut).then_some((m, f))
        })
        .collect();
    let listed: Vec<Listed> = futures::stream::iter(candidates.into_iter().map(|(meta, f)| {
        let store = store.clone();
        async move {
            let path = meta.location.to_string();
            #[allow(deprecated)]
            let reader =
                ParquetObjectReader::new(store, meta.location.clone()).with_file_size(meta.size);
            let skipped = |reason: String| {
                tracing::error!(file = %path, %reason, "archive file left out of the batch run");
                Ok(Listed::Skipped(skipped_file(&meta, reason)))
            };
            let builder = match ParquetRecordBatchStreamBuilder::new(reader).await {
                Ok(b) => b,
                // The store did not answer: not the file's fault.
                Err(e @ ParquetError::External(_)) => return Err(e.into()),
                Err(e) => return skipped(format!("unreadable Parquet footer: {e}")),
            };
            let footer = builder.metadata().clone();
            let Some(days) = archive_file::days_of(&footer) else {
                return skipped("no `tally.days` footer metadata".into());
            };
            Ok::<_, BatchError>(Listed::Read(Box::new(Input {
                path,
                topic: f.topic,
                last_offset: archive_file::last_offset_in(&footer),
                promoted: promote::promoted_in(&footer),
                span: span_of(&footer),
                days,
                meta,
                footer,
            })))
        }
    }))
    .buffer_unordered(16)
    .try_collect()
    .await?;
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    for l in listed {
        match l {
            Listed::Read(i) => out.push(*i),
            Listed::Skipped(s) => skipped.push(s),
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((out, skipped))
}

/// The coordinates a file holds, from its column statistics.
fn span_of(meta: &ParquetMetaData) -> Option<Span> {
    let schema = meta.file_metadata().schema_descr();
    let col =
        |name: &str| (0..schema.num_columns()).find(|&i| schema.column(i).path().string() == name);
    let (t, p, o) = (col("topic")?, col("partition")?, col("offset")?);
    let mut span: Option<Span> = None;
    for rg in meta.row_groups() {
        let topics = match rg.column(t).statistics()? {
            Statistics::ByteArray(s) => (
                std::str::from_utf8(s.min_opt()?.data()).ok()?.to_owned(),
                std::str::from_utf8(s.max_opt()?.data()).ok()?.to_owned(),
            ),
            _ => return None,
        };
        if topics.0 != topics.1 {
            return None; // several topics: overlaps everything
        }
        let partitions = match rg.column(p).statistics()? {
            Statistics::Int32(s) => (*s.min_opt()?, *s.max_opt()?),
            _ => return None,
        };
        let offsets = match rg.column(o).statistics()? {
            Statistics::Int64(s) => (*s.min_opt()?, *s.max_opt()?),
            _ => return None,
        };
        span = Some(match span {
            None => Span {
                topic: topics.0,
                partitions,
                offsets,
            },
            Some(s) if s.topic == topics.0 => Span {
                topic: s.topic,
                partitions: (
                    s.partitions.0.min(partitions.0),
                    s.partitions.1.max(partitions.1),
                ),
                offsets: (s.offsets.0.min(offsets.0), s.offsets.1.max(offsets.1)),
            },
            Some(_) => return None,
        });
    }
    span
}

/// The files of `inputs` that may share records, as groups of indexes
/// (each group closed under overlap); files in no group share nothing.
pub(super) fn overlapping(inputs: &[&Input]) -> Vec<Vec<usize>> {
    let n = inputs.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut union = |a: usize, b: usize| {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    };
    // Single-partition files: a sweep per (topic, partition) by first offset.
    // Per (topic, partition): (first offset, last offset, input index).
    type Runs<'a> = BTreeMap<(&'a str, i32), Vec<(i64, i64, usize)>>;
    let mut runs: Runs = BTreeMap::new();
    let mut wide: Vec<usize> = Vec::new();
    for (i, f) in inputs.iter().enumerate() {
        match &f.span {
            Some(s) if s.partitions.0 == s.partitions.1 => runs
                .entry((s.topic.as_str(), s.partitions.0))
                .or_default()
                .push((s.offsets.0, s.offsets.1, i)),
            _ => wide.push(i),
        }
    }
    for run in runs.values_mut() {
        run.sort_unstable();
        let mut reach: Option<(i64, usize)> = None;
        for &(lo, hi, i) in run.iter() {
            match reach {
                Some((end, j)) if lo <= end => {
                    union(i, j);
                    if hi > end {
                        reach = Some((hi, i));
                    }
                }
                _ => reach = Some((hi, i)),
            }
        }
    }
    // Files of several partitions (written by hand), or without statistics:
    // compared with every file.
    for &w in &wide {
        for j in 0..n {
            if j != w && inputs[w].overlaps(inputs[j]) {
                union(w, j);
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..n {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(i);
    }
    groups.into_values().filter(|g| g.len() > 1).collect()
}

/// The report of a file left out of a run, and why.
pub(super) fn skipped_file(meta: &ObjectMeta, reason: String) -> SkippedFile {
    SkippedFile {
        path: meta.location.to_string(),
        size: meta.size,
        e_tag: meta.e_tag.clone(),
        reason,
    }
}
