//! `views/<view>/_manifest.json`: the published snapshot of one view, and
//! its one reader and writer.
//!
//! The manifest is a JSON object tagged with a `version`, so a reader refuses
//! a format it does not know instead of misreading it. Guarantees: every
//! version ever written still reads ([`Manifest::V1`], before roll-up levels,
//! reads as one level through [`Manifest::into_current`]); one put publishes
//! a whole snapshot ([`put_if`], conditional on the version read); the files
//! it lists follow [`crate::snapshot`]'s schema.

use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tally_core::time::Epoch;
use tally_core::view::ViewDef;

use crate::object::{self, StoreError, Version, Written};
use crate::paths;

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
    /// [`ViewDef::fingerprint`] of the definition it was computed with.
    pub definition: String,
    pub created_ms: i64,
    pub days: Vec<DayFile>,
    /// Archive files (paths) the snapshot covers.
    pub inputs: Vec<String>,
    pub rows_read: u64,
}

/// The current manifest: every day at every roll-up level of the view
/// ([`ViewDef::levels`]), and the inputs with what identifies
/// their content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestV2 {
    pub view: String,
    pub run_id: String,
    /// The snapshot holds exactly the records with ingest epoch `< cut`.
    pub cut: Epoch,
    /// [`ViewDef::fingerprint`] of the definition it was computed with.
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

/// The manifest of the view named `view` as stored, with its version for a
/// conditional [`put_if`]; `None` when none was published yet. A manifest
/// that is not valid JSON of a known version is [`StoreError::Json`]: the
/// caller decides what an unreadable one means.
pub async fn get(
    store: &dyn ObjectStore,
    view: &str,
) -> Result<Option<(Manifest, Version)>, StoreError> {
    object::get_json(store, &paths::manifest(view)).await
}

/// The manifest of `view` in the current shape ([`Manifest::into_current`]);
/// `None` when none was published yet.
pub async fn read(
    store: &dyn ObjectStore,
    view: &ViewDef,
) -> Result<Option<ManifestV2>, StoreError> {
    Ok(get(store, &view.name)
        .await?
        .map(|(m, _)| m.into_current(view.granularity.as_ms())))
}

/// Publish `manifest` (always written in the current version) as its view's snapshot, only over the version read
/// (`None`: only if there is none yet). [`StoreError::Conflict`] when another
/// run published first.
pub async fn put_if(
    store: &dyn ObjectStore,
    manifest: ManifestV2,
    expected: Option<&Version>,
) -> Result<Written, StoreError> {
    let path = paths::manifest(&manifest.view);
    object::put_json_if(store, &path, &Manifest::V2(manifest), expected).await
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
