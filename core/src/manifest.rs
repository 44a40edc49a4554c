//! What the batch layer publishes and the other layers read: the cut, the
//! archiver's progress, and a view's snapshot manifest with its file schema.
//!
//! All are JSON objects tagged with a `version`, so a reader can refuse a
//! format it does not know instead of misreading it.
//!
//! A snapshot file (`views/<view>/run=<id>/g=<level>/day=<d>.parquet`) has
//! one row per (bucket, group) of one UTC day at one roll-up level, sorted by
//! bucket, and these columns:
//!
//! | column | type | holds |
//! |---|---|---|
//! | `bucket_ms` | Int64 | bucket start, epoch ms, at the view's granularity |
//! | `d:<path>` | Utf8, nullable | one per dimension, e.g. `d:properties.page` |
//! | `m:<name>` | UInt64 | `count` |
//! | `m:<name>:int`, `m:<name>:float` | Decimal128(38, 0), Float64 | `sum`, integer and float parts (readers also accept an Int64 integer part, as older snapshots wrote) |
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

/// One file of a snapshot: one UTC day at one roll-up level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayFile {
    pub day: i64,
    /// Bucket width of its rows, ms. Absent in version 1 manifests, which
    /// hold the view's own granularity only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level_ms: Option<i64>,
    pub path: String,
    pub rows: u64,
    /// The file's size in bytes (absent in version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// An archive file a snapshot read, as it was when read. A rewrite under the
/// same name changes its size, its e-tag or its last offset, so the next run
/// notices it even where modification times are coarse or skewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    /// The footer's `tally.last_offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_offset: Option<i64>,
}

/// An archive file a run could not read (no Parquet footer, or none of
/// Tally's footer metadata) and left out, as it was when tried. The file is
/// left in place; each run tries it again, and once it reads (replaced by a
/// good copy) it counts as a new input and its days are recomputed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub path: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    /// Why it was left out.
    pub reason: String,
}

/// `views/<view>/_manifest.json`: the published snapshot of one view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum Manifest {
    /// Written before roll-up levels: one file per day at the view's granularity.
    #[serde(rename = "1")]
    V1(ManifestV1),
    #[serde(rename = "2")]
    V2(ManifestV2),
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

/// The current manifest: every day at every roll-up level of the view
/// ([`crate::view::ViewDef::levels`]), and the inputs with what identifies
/// their content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestV2 {
    pub view: String,
    pub run_id: String,
    /// The snapshot holds exactly the records with ingest epoch `< cut`.
    pub cut: Epoch,
    /// [`crate::view::ViewDef::fingerprint`] of the definition it was computed with.
    pub definition: String,
    pub created_ms: i64,
    /// The levels every day is written at, finest (the view's granularity)
    /// first, in ms.
    pub levels_ms: Vec<i64>,
    /// One entry per (day, level).
    pub days: Vec<DayFile>,
    pub inputs: Vec<InputFile>,
    pub rows_read: u64,
    /// Archive files of the view's topics the run could not read and left
    /// out: the snapshot lacks their records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedFile>,
}

impl ManifestV2 {
    /// The files of one level, by day (a v1 manifest's files count as the
    /// finest level).
    pub fn files_at(&self, level_ms: i64) -> impl Iterator<Item = &DayFile> {
        let finest = self.levels_ms.first().copied();
        self.days
            .iter()
            .filter(move |d| d.level_ms.or(finest) == Some(level_ms))
    }
}

impl Manifest {
    /// The cut the snapshot covers, whatever the version.
    pub fn cut(&self) -> Epoch {
        match self {
            Manifest::V1(m) => m.cut,
            Manifest::V2(m) => m.cut,
        }
    }

    /// Every file the snapshot refers to, whatever the version.
    pub fn days(&self) -> &[DayFile] {
        match self {
            Manifest::V1(m) => &m.days,
            Manifest::V2(m) => &m.days,
        }
    }

    /// The manifest in the current shape. A version 1 manifest has one level,
    /// `view_granularity_ms` (it does not record it), and inputs of unknown
    /// size, so that the next run treats them as changed and re-reads them.
    pub fn into_current(self, view_granularity_ms: i64) -> ManifestV2 {
        match self {
            Manifest::V2(m) => m,
            Manifest::V1(m) => ManifestV2 {
                view: m.view,
                run_id: m.run_id,
                cut: m.cut,
                definition: m.definition,
                created_ms: m.created_ms,
                levels_ms: vec![view_granularity_ms],
                days: m
                    .days
                    .into_iter()
                    .map(|d| DayFile {
                        level_ms: Some(d.level_ms.unwrap_or(view_granularity_ms)),
                        ..d
                    })
                    .collect(),
                inputs: m
                    .inputs
                    .into_iter()
                    .map(|path| InputFile {
                        path,
                        size: 0,
                        e_tag: None,
                        last_offset: None,
                    })
                    .collect(),
                rows_read: m.rows_read,
                skipped: Vec::new(),
            },
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
    fn a_version_1_manifest_reads_as_one_level_with_inputs_to_recheck() {
        let v1 = r#"{"version":"1","view":"v","run_id":"r","cut":9,"definition":"d","created_ms":5,
            "days":[{"day":3,"path":"views/v/run=r/day=3.parquet","rows":7}],
            "inputs":["events/a.parquet"],"rows_read":7}"#;
        let m: Manifest = serde_json::from_str(v1).unwrap();
        assert_eq!(m.cut(), 9);
        let m = m.into_current(60_000);
        assert_eq!(m.levels_ms, vec![60_000]);
        assert_eq!(m.files_at(60_000).count(), 1);
        assert_eq!(m.days[0].level_ms, Some(60_000));
        assert_eq!(m.inputs[0].size, 0);
        let again: Manifest =
            serde_json::from_str(&serde_json::to_string(&Manifest::V2(m.clone())).unwrap())
                .unwrap();
        assert_eq!(again.into_current(1), m);
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
