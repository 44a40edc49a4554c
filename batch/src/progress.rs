//! The archiver's shared objects: each partition's progress, fenced by a
//! claim, and the cut, published only forward.
//!
//! # Progress: who may advance it
//!
//! `archive/progress/<topic>/<partition>.json` says how far the partition is
//! durable in the master dataset. Several archivers share the partitions (a
//! consumer group), so a partition changes hands at rebalances and a member
//! that missed its revocation (a *zombie*: stalled, or cut off from the group
//! coordinator but not from the store) may still try to write. The rule:
//!
//! - On assignment an archiver [`claim`]s the partition: it reads the object
//!   with its version and writes it back with a fresh owner token, as a
//!   conditional put (retried from a fresh read when someone wrote in
//!   between). The new token makes the write change the object even on stores
//!   whose version is a hash of the content.
//! - Every later advance ([`Claim::advance`]) is a conditional put over the
//!   version of the claim's last write. After a newer claim, a zombie's put
//!   fails with a conflict: it has lost the partition ([`Fenced::Lost`]) and
//!   drops what it buffered. The newest claimant always wins.
//! - Stores without compare-and-swap (the local file system: object_store has
//!   create-if-absent there, not update-if-version) fall back to an
//!   overwrite. There every advance first re-reads the object and writes only
//!   if the owner is still this claim and `archived_to` does not move back.
//!   That is check-then-write: a zombie that passes the check and then stalls
//!   can still overwrite a newer owner's progress with an older one. Progress
//!   then moves back (records are re-archived, which the batch de-duplicates),
//!   and the newer owner sees a foreign token at its next check and stops
//!   archiving the partition until the next rebalance. Nothing is counted
//!   twice; on `file://` run the archivers of a deployment on one machine, or
//!   use a store with conditional puts for a group across machines.
//!
//! # The cut
//!
//! Each member knows only its own partitions, so the cut is computed from the
//! progress objects of *every* partition ([`cut_from_progress`]): a partition without
//! a reached observation (never archived, or archived below the end offset it
//! last observed) holds the cut back. [`publish_cut`] writes it only when it
//! is larger than the stored one, as a conditional put retried on conflict, so
//! the cut never moves back on stores with conditional puts. On the local file
//! system two members publishing at the same moment can race (check, then
//! overwrite); the loser's value is at most one refresh behind, and the next
//! publish moves it forward again.

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use tally_core::time::{Epoch, EpochGrid};
use tally_store::cut::{self, CutFile};
use tally_store::progress::{self as stored, ProgressFile};
use tally_store::{paths, StoreError, Version};

/// How often a claim or a cut is retried against concurrent writers before
/// giving up for now.
const ATTEMPTS: usize = 20;
/// Progress objects read at once when computing the cut.
const READ_CONCURRENCY: usize = 16;

/// Why a progress or cut operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Other writers kept winning: try again later.
    #[error("object `{0}` kept changing under {ATTEMPTS} attempts to update it")]
    Contested(String),
}

/// The latest observation `(end offset, wall-clock ms)` that a partition's
/// durable position has reached: every record below the end offset seen at
/// that time is archived.
pub(crate) type Reached = Option<(i64, i64)>;

/// Whether a fenced write went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// Written: the partition is still this claim's.
    Held,
    /// Someone claimed the partition since (or moved it forward): this
    /// archiver is a zombie for it and must stop.
    Lost,
}

/// A partition's progress object as claimed by this archiver.
#[derive(Debug)]
pub struct Claim {
    pub topic: String,
    pub partition: i32,
    /// Everything below is durable, as last written.
    pub archived_to: i64,
    /// The observation reached, as last written.
    pub reached: Reached,
    owner: String,
    /// Version of the object as this claim last wrote it.
    version: Version,
    /// Whether the store checked that version on the last write.
    conditional: bool,
}

/// Claim `topic`/`partition`: read its progress and write it back under a
/// fresh owner token. `low` is the partition's low watermark: records below
/// it are gone from Kafka, so the claim starts there at the earliest.
pub async fn claim(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    low: i64,
) -> Result<Claim, ProgressError> {
    let path = paths::archive_progress(topic, partition);
    let owner = format!("{:016x}", rand::random::<u64>());
    for _ in 0..ATTEMPTS {
        let (archived_to, reached, expected) = match stored::get(store, topic, partition).await? {
            Some((file, version)) => (archived_to_of(&file), reached_of(&file), Some(version)),
            None => (0, None, None),
        };
        if low > archived_to {
            tracing::warn!(
                topic,
                partition,
                low,
                archived_to,
                "records below the low watermark were deleted before they were archived"
            );
        }
        let mut claim = Claim {
            topic: topic.to_owned(),
            partition,
            archived_to: archived_to.max(low),
            reached,
            owner: owner.clone(),
            version: Version {
                e_tag: None,
                version: None,
            },
            conditional: false,
        };
        match stored::put_if(store, &claim.file(), expected.as_ref()).await {
            Ok(w) => {
                claim.version = w.version;
                // A create says nothing about compare-and-swap (file:// has
                // the one, not the other): check until an update has told.
                claim.conditional = expected.is_some() && w.conditional;
                return Ok(claim);
            }
            // Written between our read and our put (the previous owner's last
            // roll, or another claimant): read again.
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ProgressError::Contested(path))
}

impl Claim {
    /// The object as this claim would write it.
    fn file(&self) -> ProgressFile {
        let (high_watermark, observed_ms) = match self.reached {
            Some(r) => r,
            // Not reached: an end offset above `archived_to` says so.
            None => (self.archived_to + 1, 0),
        };
        ProgressFile::V1 {
            topic: self.topic.clone(),
            partition: self.partition,
            archived_to: self.archived_to,
            high_watermark,
            observed_ms,
            owner: Some(self.owner.clone()),
        }
    }

    /// Whether the stored object is still this claim's: its owner token and a
    /// position not ahead of ours. One read; not atomic with what follows.
    pub async fn still_ours(&self, store: &dyn ObjectStore) -> Result<bool, ProgressError> {
        Ok(
            match stored::get(store, &self.topic, self.partition).await? {
                Some((file, _)) => {
                    let ProgressFile::V1 { owner, .. } = &file;
                    owner.as_deref() == Some(self.owner.as_str())
                        && archived_to_of(&file) <= self.archived_to
                }
                None => false,
            },
        )
    }

    /// Advance the progress to `archived_to` with observation `reached`,
    /// fenced (see the module doc). A position below the current one is
    /// refused: progress never moves back through a claim.
    pub async fn advance(
        &mut self,
        store: &dyn ObjectStore,
        archived_to: i64,
        reached: Reached,
    ) -> Result<Fenced, ProgressError> {
        if archived_to < self.archived_to {
            tracing::warn!(topic = %self.topic, partition = self.partition, archived_to,
                current = self.archived_to, "refusing to move archive progress back");
            return Ok(Fenced::Held);
        }
        // Without compare-and-swap the check is all the fence there is.
        if !self.conditional && !self.still_ours(store).await? {
            return Ok(Fenced::Lost);
        }
        let (old_to, old_reached) = (self.archived_to, self.reached);
        self.archived_to = archived_to;
        self.reached = reached;
        match stored::put_if(store, &self.file(), Some(&self.version)).await {
            Ok(w) => {
                self.version = w.version;
                self.conditional = w.conditional;
                Ok(Fenced::Held)
            }
            Err(StoreError::Conflict(_)) => {
                (self.archived_to, self.reached) = (old_to, old_reached);
                Ok(Fenced::Lost)
            }
            Err(e) => {
                (self.archived_to, self.reached) = (old_to, old_reached);
                Err(e.into())
            }
        }
    }
}

fn archived_to_of(file: &ProgressFile) -> i64 {
    let ProgressFile::V1 { archived_to, .. } = file;
    *archived_to
}

/// The observation a progress object records as reached, if any.
pub(crate) fn reached_of(file: &ProgressFile) -> Reached {
    let ProgressFile::V1 {
        archived_to,
        high_watermark,
        observed_ms,
        ..
    } = file;
    (archived_to >= high_watermark).then_some((*high_watermark, *observed_ms))
}

/// The cut the observations allow: the first epoch not complete everywhere.
/// `None` when some partition has not reached any observation.
pub(crate) fn cut_of(
    reached: impl IntoIterator<Item = Option<i64>>,
    grid: EpochGrid,
    grace: i64,
) -> Option<Epoch> {
    let mut cut: Option<Epoch> = None;
    for r in reached {
        let ms = r?;
        // Epoch e is complete when end(e) + grace <= ms, i.e. e + 1 <= (ms - grace) / len.
        let e = (ms - grace).div_euclid(grid.len_ms);
        cut = Some(cut.map_or(e, |c: Epoch| c.min(e)));
    }
    cut
}

/// The cut that the stored progress of every partition allows: `partitions`
/// lists each topic with its partition count (from the broker's metadata, not
/// from what this archiver owns).
pub async fn cut_from_progress(
    store: &dyn ObjectStore,
    partitions: &[(String, i32)],
    grid: EpochGrid,
    grace: i64,
) -> Result<Option<Epoch>, ProgressError> {
    let all: Vec<(String, i32)> = partitions
        .iter()
        .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
        .collect();
    if all.is_empty() {
        return Ok(None);
    }
    let reached: Vec<Option<i64>> = futures::stream::iter(all)
        .map(|(topic, partition)| async move {
            let file = stored::get(store, &topic, partition).await?;
            Ok::<_, StoreError>(file.and_then(|(f, _)| reached_of(&f)).map(|(_, ms)| ms))
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(cut_of(reached, grid, grace))
}

/// Publish `cut` unless the stored cut is already there or past it. Returns
/// the cut stored afterwards.
pub async fn publish_cut(
    store: &dyn ObjectStore,
    cut: Epoch,
    decided_ms: i64,
) -> Result<Epoch, ProgressError> {
    for _ in 0..ATTEMPTS {
        let expected = match cut::get(store).await? {
            Some((CutFile::V1 { cut: current, .. }, _)) if current >= cut => return Ok(current),
            Some((_, version)) => Some(version),
            None => None,
        };
        let file = CutFile::V1 { cut, decided_ms };
        match cut::put_if(store, &file, expected.as_ref()).await {
            Ok(_) => return Ok(cut),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ProgressError::Contested(paths::CUT.to_owned()))
}

/// The archive cut as last published, if any.
pub async fn published_cut(store: &dyn ObjectStore) -> Result<Option<Epoch>, ProgressError> {
    Ok(cut::get(store).await?.map(|(file, _)| file.cut()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[test]
    fn the_cut_waits_for_the_slowest_partition_and_the_grace() {
        let grid = EpochGrid::new(1000);
        assert_eq!(cut_of([Some(5_000), Some(3_500)], grid, 0), Some(3));
        assert_eq!(cut_of([Some(5_000), Some(3_500)], grid, 600), Some(2));
        assert_eq!(cut_of([Some(5_000), None], grid, 0), None);
    }

    #[tokio::test]
    async fn the_cut_only_moves_forward() {
        let store = InMemory::new();
        assert_eq!(publish_cut(&store, 5, 1).await.unwrap(), 5);
        assert_eq!(publish_cut(&store, 3, 2).await.unwrap(), 5);
        assert_eq!(published_cut(&store).await.unwrap(), Some(5));
        assert_eq!(publish_cut(&store, 7, 3).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_partition_without_progress_holds_the_cut_back() {
        let store = InMemory::new();
        let grid = EpochGrid::new(1000);
        let parts = vec![("t".to_string(), 2)];
        let mut c = claim(&store, "t", 0, 0).await.unwrap();
        c.advance(&store, 10, Some((10, 9_000))).await.unwrap();
        assert_eq!(
            cut_from_progress(&store, &parts, grid, 0).await.unwrap(),
            None
        );
        // Claimed but not reached: still held back.
        let mut c1 = claim(&store, "t", 1, 0).await.unwrap();
        assert_eq!(
            cut_from_progress(&store, &parts, grid, 0).await.unwrap(),
            None
        );
        c1.advance(&store, 0, Some((0, 4_000))).await.unwrap();
        assert_eq!(
            cut_from_progress(&store, &parts, grid, 0).await.unwrap(),
            Some(4)
        );
    }
}
