//! `archive/progress/<topic>/<partition>.json`: how far the archiver got in
//! one partition, as stored.
//!
//! Guarantees: the object is versioned JSON; files written before the
//! archivers formed a group (no `owner`) still read; [`put_if`] writes only
//! over the version read. Who may write it and when (the claim and its
//! fence) is the archiver's logic (`tally_batch::progress`), not this
//! module's.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::object::{self, StoreError, Version, Written};
use crate::paths;

/// `archive/progress/<topic>/<partition>.json`: how far the archiver got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum ProgressFile {
    #[serde(rename = "1")]
    V1 {
        topic: String,
        partition: i32,
        /// Every offset below this one is durable in the master dataset.
        archived_to: i64,
        /// The partition's end offset when it was last looked at.
        high_watermark: i64,
        /// Wall-clock time of `high_watermark`, epoch ms.
        observed_ms: i64,
        /// The archiver that claimed the partition last (a fresh token per
        /// assignment). A claim always changes the object, so a previous
        /// owner's conditional put fails even on stores whose version is a
        /// content hash (S3 ETags); where there are no conditional puts, the
        /// archivers compare it before writing. Absent in files written before
        /// group membership (read as "nobody").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
}

impl ProgressFile {
    /// The partition's object path.
    pub fn path(&self) -> String {
        let ProgressFile::V1 {
            topic, partition, ..
        } = self;
        paths::archive_progress(topic, *partition)
    }
}

/// The progress of `topic`/`partition` as stored, with its version; `None`
/// when the partition was never claimed.
pub async fn get(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
) -> Result<Option<(ProgressFile, Version)>, StoreError> {
    object::get_json(store, &paths::archive_progress(topic, partition)).await
}

/// Write `file` (to its partition's path) only over `expected` (`None`:
/// only if there is none yet).
pub async fn put_if(
    store: &dyn ObjectStore,
    file: &ProgressFile,
    expected: Option<&Version>,
) -> Result<Written, StoreError> {
    object::put_json_if(store, &file.path(), file, expected).await
}

/// Every partition's progress, at most `limit` of them, for status pages:
/// a listing that fails is an error, an object that cannot be read or
/// parsed is left out.
pub async fn all(store: &dyn ObjectStore, limit: usize) -> Result<Vec<ProgressFile>, StoreError> {
    let listed: Vec<_> = store
        .list(Some(&Path::from(paths::ARCHIVE_PROGRESS_ROOT)))
        .take(limit)
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for o in listed {
        if let Ok(Some((p, _))) = object::get_json::<ProgressFile>(store, o.location.as_ref()).await
        {
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_without_an_owner_still_reads() {
        // Written before the archiver joined a consumer group.
        let old = r#"{"version":"1","topic":"events","partition":0,"archived_to":90,"high_watermark":100,"observed_ms":5}"#;
        let ProgressFile::V1 {
            owner, archived_to, ..
        } = serde_json::from_str(old).unwrap();
        assert_eq!((owner, archived_to), (None, 90));
        let claimed = ProgressFile::V1 {
            topic: "events".into(),
            partition: 0,
            archived_to: 90,
            high_watermark: 100,
            observed_ms: 5,
            owner: Some("a1".into()),
        };
        let text = serde_json::to_string(&claimed).unwrap();
        assert_eq!(
            serde_json::from_str::<ProgressFile>(&text).unwrap(),
            claimed
        );
    }
}
