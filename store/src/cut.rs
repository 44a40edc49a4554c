//! `archive/cut.json`: the cut as the archiver publishes it and every
//! layer reads it.
//!
//! Guarantees: the object is versioned JSON (an unknown version is refused,
//! not misread); a missing object reads as `None` ("no epoch complete yet");
//! [`put_if`] writes only over the version read, so a caller that re-reads
//! on [`StoreError::Conflict`] never moves the cut back on stores with
//! conditional puts. When to move it is the archiver's decision
//! (`tally_batch::progress`), not this module's.

use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tally_core::time::Epoch;

use crate::object::{self, StoreError, Version, Written};
use crate::paths;

/// `archive/cut.json`: the first ingest epoch not yet complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum CutFile {
    #[serde(rename = "1")]
    V1 {
        cut: Epoch,
        /// Wall-clock time of the decision, epoch ms.
        decided_ms: i64,
    },
}

impl CutFile {
    /// The first epoch not complete.
    pub fn cut(&self) -> Epoch {
        let CutFile::V1 { cut, .. } = self;
        *cut
    }
}

/// The cut as stored, with its version; `None` when none was published.
pub async fn get(store: &dyn ObjectStore) -> Result<Option<(CutFile, Version)>, StoreError> {
    object::get_json(store, paths::CUT).await
}

/// Write `file` only over `expected` (`None`: only if there is none yet).
pub async fn put_if(
    store: &dyn ObjectStore,
    file: &CutFile,
    expected: Option<&Version>,
) -> Result<Written, StoreError> {
    object::put_json_if(store, paths::CUT, file, expected).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_tagged_with_their_version() {
        let c = CutFile::V1 {
            cut: 7,
            decided_ms: 1,
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(text, r#"{"version":"1","cut":7,"decided_ms":1}"#);
        assert_eq!(serde_json::from_str::<CutFile>(&text).unwrap(), c);
        assert!(serde_json::from_str::<CutFile>(r#"{"version":"9","cut":7}"#).is_err());
    }
}
