//! What the batch layer publishes and the other layers read: the cut, the
//! archiver's progress, and a view's snapshot manifest with its file schema.
//!
//! All are JSON objects tagged with a `version`, so a reader can refuse a
//! format it does not know instead of misreading it.
//!
//! A snapshot file (`views/<view>/run=<id>/day=<d>.parquet`) has one row per
//! (bucket, group) and these columns:
//!
//! | column | type | holds |
//! |---|---|---|
//! | `bucket_ms` | Int64 | bucket start, epoch ms, at the view's granularity |
//! | `d:<path>` | Utf8, nullable | one per dimension, e.g. `d:properties.page` |
//! | `m:<name>` | UInt64 | `count` |
//! | `m:<name>:int`, `m:<name>:float` | Int64, Float64 | `sum`, integer and float parts |
//! | `m:<name>` | Float64, nullable | `min`, `max` |
//! | `m:<name>` | Binary | `distinct`: Redis HyperLogLog bytes ([`crate::hll`]) |

use serde::{Deserialize, Serialize};

use crate::agg::AggKind;
use crate::time::Epoch;
use crate::view::{FieldPath, MeasureDef};

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

/// One day's file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayFile {
    pub day: i64,
    pub path: String,
    pub rows: u64,
}

/// `views/<view>/_manifest.json`: the published snapshot of one view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum Manifest {
    #[serde(rename = "1")]
    V1(ManifestV1),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestV1 {
    pub view: String,
    pub run_id: String,
    /// The snapshot holds exactly the records with ingest epoch `< cut`.
    pub cut: Epoch,
    /// [`crate::view::ViewDef::fingerprint`] of the definition it was computed with.
    pub definition: String,
    pub created_ms: i64,
    pub days: Vec<DayFile>,
    /// Archive files (paths) the snapshot covers.
    pub inputs: Vec<String>,
    pub rows_read: u64,
}

impl Manifest {
    pub fn v1(&self) -> &ManifestV1 {
        match self {
            Manifest::V1(m) => m,
        }
    }
}

/// Column names of a snapshot file.
pub mod columns {
    use super::*;

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
