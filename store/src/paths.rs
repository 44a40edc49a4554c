//! Every object-store path Tally uses, in one place.
//!
//! ```text
//! events/epoch=0000473040/t=events/p=0003/o=00000000000000120000.parquet   master dataset
//! archive/progress/events/0003.json                                        archiver position
//! archive/cut.json                                                         the cut E
//! views/page_views/_manifest.json                                          published snapshot
//! views/page_views/run=20240101T020000Z-1a2b/g=1h/day=19723.parquet        snapshot files (one per day and level)
//! batch/_lock.json                                                         batch run lock
//! ```
//!
//! Numbers are zero-padded so that a listing sorts by epoch, partition and
//! offset. An archive file is named by its first offset, so a rewrite after a
//! crash overwrites the same object instead of adding a duplicate.

use tally_core::time::{Epoch, Granularity};

/// The root of the master dataset.
pub const EVENTS_ROOT: &str = "events";

/// The folder of one ingest epoch.
pub fn epoch_dir(epoch: Epoch) -> String {
    format!("{EVENTS_ROOT}/epoch={epoch:010}")
}

/// The folder of one partition's archive files in one epoch (with the
/// trailing slash, so that it lists exactly that folder).
pub fn archive_partition_dir(epoch: Epoch, topic: &str, partition: i32) -> String {
    format!("{}/t={topic}/p={partition:04}/", epoch_dir(epoch))
}

/// An archive file: records of `topic`/`partition` in `epoch` from `start_offset`.
pub fn archive_file(epoch: Epoch, topic: &str, partition: i32, start_offset: i64) -> String {
    format!(
        "{}o={start_offset:020}.parquet",
        archive_partition_dir(epoch, topic, partition)
    )
}

/// The coordinates encoded in an archive file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    pub epoch: Epoch,
    pub topic: String,
    pub partition: i32,
    pub start_offset: i64,
}

/// Parse a path made by [`archive_file`].
pub fn parse_archive_file(path: &str) -> Option<ArchiveFile> {
    let rest = path.strip_prefix(EVENTS_ROOT)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let epoch = parts.next()?.strip_prefix("epoch=")?.parse().ok()?;
    let topic = parts.next()?.strip_prefix("t=")?.to_owned();
    let partition = parts.next()?.strip_prefix("p=")?.parse().ok()?;
    let start_offset = parts
        .next()?
        .strip_prefix("o=")?
        .strip_suffix(".parquet")?
        .parse()
        .ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(ArchiveFile {
        epoch,
        topic,
        partition,
        start_offset,
    })
}

/// The archiver's position for one partition.
pub fn archive_progress(topic: &str, partition: i32) -> String {
    format!("archive/progress/{topic}/{partition:04}.json")
}

pub const ARCHIVE_PROGRESS_ROOT: &str = "archive/progress";

/// The published cut.
pub const CUT: &str = "archive/cut.json";

/// The folder of one view's snapshots.
pub fn view_dir(view: &str) -> String {
    format!("views/{view}")
}

/// The manifest of a view: one atomic put publishes a snapshot.
pub fn manifest(view: &str) -> String {
    format!("views/{view}/_manifest.json")
}

/// The folder of one snapshot run.
pub fn run_dir(view: &str, run_id: &str) -> String {
    format!("views/{view}/run={run_id}")
}

/// One day of one snapshot run at one roll-up level.
pub fn snapshot_file(view: &str, run_id: &str, level: Granularity, day: i64) -> String {
    format!("{}/g={level}/day={day}.parquet", run_dir(view, run_id))
}

/// The lock that keeps batch runs from overlapping.
pub const BATCH_LOCK: &str = "batch/_lock.json";

/// Where objects a run could not read are copied before they are replaced
/// (`quarantine/<original path>.<run id>`); nothing reads or deletes them.
pub const QUARANTINE_ROOT: &str = "quarantine";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_round_trip_and_sort() {
        let p = archive_file(473_040, "events", 3, 120_000);
        assert_eq!(
            p,
            "events/epoch=0000473040/t=events/p=0003/o=00000000000000120000.parquet"
        );
        assert_eq!(
            parse_archive_file(&p),
            Some(ArchiveFile {
                epoch: 473_040,
                topic: "events".into(),
                partition: 3,
                start_offset: 120_000
            })
        );
        assert!(archive_file(9, "t", 0, 99) < archive_file(10, "t", 0, 0));
        assert!(archive_file(1, "t", 0, 99) < archive_file(1, "t", 0, 100));
        assert_eq!(parse_archive_file("events/epoch=1/x"), None);
    }
}
