//! The archiver: every Kafka record into the master dataset, exactly once by
//! coordinates, and the cut.
//!
//! The archiver takes every partition of the configured topics (manual
//! assignment; one archiver per deployment) and resumes each from the position
//! stored in the object store (`archive/progress/...`), never from Kafka's
//! committed offset (that commit is advisory, for lag tooling). Because Tansu
//! skips the rest of a record batch on a mid-batch seek, it seeks
//! `kafka.seek_back` records earlier and drops what it has already archived.
//!
//! Records are buffered per partition, in one file per ingest epoch, and rolled
//! *together* (all epochs of a partition at once) when the partition holds
//! `archive.roll_bytes` of raw records or its oldest record is
//! `archive.roll_interval` old. After a roll every file is durable, and only then
//! is the progress advanced. A crash between writing files and advancing the
//! progress replays the same records in the same order; each epoch's first
//! record after the resume point is the same, so the files get the same names
//! and are overwritten, never duplicated.
//!
//! The cut: for each partition the archiver keeps an *observation* (the
//! partition's end offset and the wall-clock time it was read). Once everything
//! below that end offset is durable, every epoch `e` with `end(e) + grace <=
//! observed_ms` is complete on that partition. The cut is the first epoch not
//! complete on every partition; it only ever moves forward.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tally_core::config::Config;
use tally_core::manifest::{CutFile, ProgressFile};
use tally_core::paths;
use tally_core::time::{Epoch, EpochClock};

use crate::archive_file::{self, ArchiveRows, FileError};
use crate::store::{self, StoreError};

/// Why the archiver stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic `{0}` does not exist on the broker")]
    NoTopic(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing archive file: {0}")]
    File(#[from] FileError),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What one archiver run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveSummary {
    pub records: u64,
    pub files: u64,
    /// The last cut published (or found).
    pub cut: Option<Epoch>,
}

/// One assigned partition.
#[derive(Debug)]
struct Part {
    topic: String,
    partition: i32,
    /// Everything below is durable in the master dataset.
    archived_to: i64,
    /// Next offset expected from the consumer.
    next: i64,
    open: BTreeMap<Epoch, ArchiveRows>,
    opened_at: Option<Instant>,
    bytes: usize,
    /// The latest observation `(end offset, ms)` that `archived_to` has reached.
    reached: Option<(i64, i64)>,
    /// The observation being worked towards.
    pending: Option<(i64, i64)>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The consumer settings from `[kafka]`.
pub fn consumer_config(cfg: &Config, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (key, value) in cfg.kafka.consumer_settings(group) {
        c.set(key, value);
    }
    c
}

/// Run the archiver until `shutdown` resolves; on shutdown everything buffered
/// is rolled and the progress and cut are published before returning.
pub async fn run(
    cfg: &Config,
    store: Arc<dyn ObjectStore>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<ArchiveSummary, ArchiveError> {
    let group = format!("{}-archive", cfg.kafka.group);
    let consumer: Arc<StreamConsumer> = Arc::new(consumer_config(cfg, &group).create()?);
    let clock = cfg.epochs.clock();
    let limits = cfg.events.limits();
    let grace = cfg.epochs.grace.0;
    let roll_bytes = cfg.archive.roll_bytes.max(1);
    let roll_interval = cfg.archive.roll_interval.as_duration();

    // Partitions and where to resume each.
    let mut parts: Vec<Part> = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for topic in &cfg.kafka.topics {
        let n = partitions_of(&consumer, topic).await?;
        for p in 0..n {
            let (low, high) = watermarks(&consumer, topic, p).await?;
            let progress: Option<(ProgressFile, _)> =
                store::get_json(store.as_ref(), &paths::archive_progress(topic, p)).await?;
            let (archived_to, reached) = match progress {
                Some((
                    ProgressFile::V1 {
                        archived_to,
                        high_watermark,
                        observed_ms,
                        ..
                    },
                    _,
                )) => (
                    archived_to,
                    (archived_to >= high_watermark).then_some((high_watermark, observed_ms)),
                ),
                None => (0, None),
            };
            if low > archived_to {
                tracing::warn!(topic = %topic, partition = p, low, archived_to,
                    "records below the low watermark were deleted before they were archived");
            }
            let from = low.max(archived_to - cfg.kafka.seek_back);
            tpl.add_partition_offset(topic, p, Offset::Offset(from))?;
            parts.push(Part {
                topic: topic.clone(),
                partition: p,
                archived_to: archived_to.max(low),
                next: archived_to.max(low),
                open: BTreeMap::new(),
                opened_at: None,
                bytes: 0,
                reached,
                pending: Some((high, now_ms())),
            });
        }
    }
    consumer.assign(&tpl)?;
    let index: BTreeMap<(String, i32), usize> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| ((p.topic.clone(), p.partition), i))
        .collect();

    let mut summary = ArchiveSummary {
        cut: store::get_json::<CutFile>(store.as_ref(), paths::CUT)
            .await?
            .map(|(CutFile::V1 { cut, .. }, _)| cut),
        ..ArchiveSummary::default()
    };
    let mut tick = tokio::time::interval(Duration::from_millis(
        (roll_interval.as_millis() as u64 / 4).clamp(10, 1000),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                for i in 0..parts.len() {
                    let due = parts[i].opened_at.is_some_and(|t| t.elapsed() >= roll_interval);
                    if due {
                        roll(&store, &consumer, &mut parts[i], &mut summary).await?;
                    }
                    observe(&store, &consumer, &mut parts[i]).await?;
                }
                publish_cut(&store, &parts, clock, grace, &mut summary).await?;
            }
            msg = consumer.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "archiver consume error");
                        continue;
                    }
                };
                let Some(&i) = index.get(&(msg.topic().to_owned(), msg.partition())) else {
                    continue;
                };
                let part = &mut parts[i];
                let offset = msg.offset();
                if offset < part.next {
                    // Seek-back replay of what is already archived or buffered.
                    continue;
                }
                let ts = msg.timestamp().to_millis().unwrap_or_else(now_ms);
                let epoch = clock.epoch_of(ts);
                let rows = part.open.entry(epoch).or_insert_with(|| ArchiveRows::new(offset));
                let value = msg.payload().unwrap_or(&[]);
                rows.push(&part.topic, part.partition, offset, ts, clock, &limits, value);
                part.bytes += value.len().max(1);
                part.next = offset + 1;
                part.opened_at.get_or_insert_with(Instant::now);
                summary.records += 1;
                if part.bytes >= roll_bytes {
                    roll(&store, &consumer, part, &mut summary).await?;
                }
            }
        }
    }
    for part in parts.iter_mut() {
        roll(&store, &consumer, part, &mut summary).await?;
        observe(&store, &consumer, part).await?;
    }
    publish_cut(&store, &parts, clock, grace, &mut summary).await?;
    Ok(summary)
}

async fn partitions_of(consumer: &Arc<StreamConsumer>, topic: &str) -> Result<i32, ArchiveError> {
    let c = consumer.clone();
    let t = topic.to_owned();
    let md = tokio::task::spawn_blocking(move || {
        c.fetch_metadata(Some(t.as_str()), Duration::from_secs(10))
    })
    .await??;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if n == 0 {
        return Err(ArchiveError::NoTopic(topic.to_owned()));
    }
    Ok(n as i32)
}

async fn watermarks(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    p: i32,
) -> Result<(i64, i64), ArchiveError> {
    let c = consumer.clone();
    let t = topic.to_owned();
    Ok(
        tokio::task::spawn_blocking(move || c.fetch_watermarks(&t, p, Duration::from_secs(10)))
            .await??,
    )
}

/// Write every open file of `part`, then advance and publish its progress.
async fn roll(
    store: &Arc<dyn ObjectStore>,
    consumer: &Arc<StreamConsumer>,
    part: &mut Part,
    summary: &mut ArchiveSummary,
) -> Result<(), ArchiveError> {
    if part.open.is_empty() {
        return Ok(());
    }
    for (epoch, rows) in part.open.iter_mut() {
        let path = paths::archive_file(*epoch, &part.topic, part.partition, rows.first_offset);
        archive_file::write(store.clone(), &path, rows).await?;
        summary.files += 1;
    }
    part.open.clear();
    part.opened_at = None;
    part.bytes = 0;
    part.archived_to = part.next;
    if let Some((hw, ms)) = part.pending {
        if part.archived_to >= hw {
            part.reached = Some((hw, ms));
        }
    }
    write_progress(store, part).await?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(
        &part.topic,
        part.partition,
        Offset::Offset(part.archived_to),
    )?;
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(error = %e, "advisory offset commit failed");
    }
    Ok(())
}

/// Advance the partition's observation when the previous one was reached.
async fn observe(
    store: &Arc<dyn ObjectStore>,
    consumer: &Arc<StreamConsumer>,
    part: &mut Part,
) -> Result<(), ArchiveError> {
    let durable = part.open.is_empty();
    let Some((hw, ms)) = part.pending else {
        return Ok(());
    };
    // Nothing buffered and nothing consumed past the durable point: the
    // pending observation is reached once everything below it is durable.
    if durable && part.archived_to >= hw {
        part.reached = Some((hw, ms));
        let observed = now_ms();
        let (_, high) = watermarks(consumer, &part.topic, part.partition).await?;
        part.pending = Some((high, observed));
        if part.archived_to >= high {
            part.reached = Some((high, observed));
        }
        write_progress(store, part).await?;
    }
    Ok(())
}

async fn write_progress(store: &Arc<dyn ObjectStore>, part: &Part) -> Result<(), ArchiveError> {
    let (hw, ms) = part.reached.unwrap_or((i64::MAX, 0));
    let file = ProgressFile::V1 {
        topic: part.topic.clone(),
        partition: part.partition,
        archived_to: part.archived_to,
        high_watermark: if hw == i64::MAX {
            part.archived_to + 1
        } else {
            hw
        },
        observed_ms: ms,
    };
    store::put_json(
        store.as_ref(),
        &paths::archive_progress(&part.topic, part.partition),
        &file,
    )
    .await?;
    Ok(())
}

/// The cut the observations allow: the first epoch not complete everywhere.
pub fn cut_of(
    reached: impl IntoIterator<Item = Option<i64>>,
    clock: EpochClock,
    grace: i64,
) -> Option<Epoch> {
    let mut cut: Option<Epoch> = None;
    for r in reached {
        let ms = r?;
        // Epoch e is complete when end(e) + grace <= ms, i.e. e + 1 <= (ms - grace) / len.
        let e = (ms - grace).div_euclid(clock.len_ms);
        cut = Some(cut.map_or(e, |c: Epoch| c.min(e)));
    }
    cut
}

async fn publish_cut(
    store: &Arc<dyn ObjectStore>,
    parts: &[Part],
    clock: EpochClock,
    grace: i64,
    summary: &mut ArchiveSummary,
) -> Result<(), ArchiveError> {
    let Some(cut) = cut_of(parts.iter().map(|p| p.reached.map(|r| r.1)), clock, grace) else {
        return Ok(());
    };
    if summary.cut.is_some_and(|c| c >= cut) {
        return Ok(());
    }
    store::put_json(
        store.as_ref(),
        paths::CUT,
        &CutFile::V1 {
            cut,
            decided_ms: now_ms(),
        },
    )
    .await?;
    summary.cut = Some(cut);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_waits_for_the_slowest_partition_and_the_grace() {
        let clock = EpochClock::new(1000);
        assert_eq!(cut_of([Some(5_000), Some(3_500)], clock, 0), Some(3));
        assert_eq!(cut_of([Some(5_000), Some(3_500)], clock, 600), Some(2));
        assert_eq!(cut_of([Some(5_000), None], clock, 0), None);
    }
}
