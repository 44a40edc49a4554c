//! Where a partition resumes.
//!
//! Redis, not Kafka's committed offset, says where the speed layer is: the
//! offset stored by the last applied chunk. Without one (first start, or Redis
//! lost its memory) the partition is rebuilt from the first record of the
//! current cut: every record of an epoch at or after the cut must be in Redis,
//! and the batch snapshot already holds the rest. Starting one epoch early
//! costs a little work and covers producers whose timestamps run slightly out
//! of order; epochs below the cut are ignored by the serving layer anyway.
//!
//! The seek itself goes `kafka.seek_back` records early and drops what lies
//! below the target (see [`tally_kafka::resume`]).

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use tally_core::time::{Epoch, EpochGrid};
use tally_core::view::ViewDef;
use tally_store::{manifest, StoreError};

use crate::error::SpeedError;

const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// The snapshot cut: the smallest cut over all views' published manifests,
/// which the speed layer must cover from; `None` while any view has none
/// (rebuild from the earliest retained record). (Not the archiver's cut,
/// which is ahead of it until the next batch run.)
///
/// A manifest that is not valid JSON counts as none: its view's cut is
/// unknown, so a rebuild starts from the earliest retained record, which
/// covers any cut (more work, nothing missed). It is logged and counted
/// (`tally_speed_unreadable_manifests_total{view}`) rather than stopping the
/// layer; the next batch run replaces it.
pub(crate) async fn snapshot_cut(
    store: &Arc<dyn ObjectStore>,
    views: &[ViewDef],
) -> Result<Option<Epoch>, SpeedError> {
    let mut cut: Option<Epoch> = None;
    for v in views {
        let m = match manifest::get(store.as_ref(), &v.name).await {
            Ok(Some((m, _))) => m,
            Ok(None) => return Ok(None),
            Err(StoreError::Json { path, source }) => {
                tracing::error!(view = %v.name, %path, error = %source, "manifest is not valid; taking the snapshot cut as unknown (a rebuild reads from the earliest retained record)");
                metrics::counter!("tally_speed_unreadable_manifests_total", "view" => v.name.clone())
                    .increment(1);
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let c = m.cut();
        cut = Some(cut.map_or(c, |x: Epoch| x.min(c)));
    }
    Ok(cut)
}

/// The offset to rebuild a partition from, given the cut.
pub(crate) fn rebuild_offset<C: ConsumerContext + 'static>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
    cut: Option<Epoch>,
    grid: EpochGrid,
) -> Result<i64, SpeedError> {
    let (low, high) = consumer.fetch_watermarks(topic, partition, BROKER_TIMEOUT)?;
    let Some(cut) = cut else { return Ok(low) };
    let since = grid.start(cut - 1);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(since))?;
    let found = consumer.offsets_for_times(tpl, BROKER_TIMEOUT)?;
    let offset = found
        .find_partition(topic, partition)
        .map(|p| p.offset())
        .unwrap_or(Offset::End);
    Ok(match offset {
        // Not clamped to `high`: Tansu 0.6 reports the last batch's base
        // offset plus one as the high watermark.
        Offset::Offset(o) => o.max(low),
        // No record at or after that time: start at the end.
        _ => high,
    })
}
