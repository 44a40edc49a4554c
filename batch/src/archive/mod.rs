//! The archiver: every Kafka record into the master dataset, exactly once by
//! coordinates (topic, partition, offset), and the cut.
//!
//! # Partitions
//!
//! The archiver is a member of the consumer group `<kafka.group>-archive`:
//! several processes split the partitions and Kafka moves them at rebalances.
//! With `kafka.assignment = "all"` (or `"partitions"`) one process takes
//! every partition (or those listed) itself, with no group, as on brokers
//! whose groups cannot be trusted with crashes (Tansu 0.6).
//!
//! The rebalance callback only records what changed and pauses newly assigned
//! partitions (it runs inside the consumer's poll: no store calls there). The
//! loop then applies the changes before it touches any partition again: for
//! an assigned partition it [claims](crate::progress::claim) the progress
//! object, seeks `kafka.seek_back` records before the claimed position
//! (Tansu skips the rest of a record batch on a mid-batch seek) and resumes
//! it, dropping what is already archived; for a revoked one it drops what it
//! buffered, unwritten. What is taken after a seek is the shared
//! [`ReadPosition`]'s decision: a first record past the claimed position
//! makes it seek further back, and a log that ends below the claimed
//! position (the topic was created again, the broker lost its records) stops
//! the partition, with an error and `tally_archive_partition_stopped`,
//! instead of archiving the new records as if the old ones were them. The next owner re-reads from the stored progress, and
//! since files are named by (partition, first offset of the epoch after the
//! resume point), it writes the same names.
//!
//! # Rolls
//!
//! Records are buffered per partition, in one file per ingest epoch, and rolled
//! *together* (all epochs of a partition at once) when the partition holds
//! `archive.roll_bytes` of raw records or its oldest record is
//! `archive.roll_interval` old. A roll's files are encoded and written by a
//! task of their own while the loop reads on (one roll in flight per
//! partition: encoding was a third of the loop's time). Once every file of a
//! roll is durable, and only then, the progress advances to where the roll
//! was cut, as a fenced write ([`crate::progress`]): a member
//! that lost the partition without noticing (a zombie) fails that write, drops
//! the partition and stops archiving it. A crash between writing files and
//! advancing the progress replays the same records in the same order; each
//! epoch's first record after the resume point is the same, so the files get
//! the same names and are overwritten, never duplicated.
//!
//! # What is guaranteed
//!
//! - Every record below a partition's stored `archived_to` is in the master
//!   dataset, in the folder of its ingest epoch; progress never moves back on
//!   stores with conditional puts (`s3://`, `memory://`).
//! - A record is in at most one file, except where a zombie's roll overlaps
//!   the new owner's: the zombie checks its claim just before writing files,
//!   so that takes a zombie stalled between that check and its writes. Its
//!   extra file costs nothing in the views (the batch de-duplicates on
//!   coordinates). A file is never replaced by a shorter one of the same
//!   name ([`archive_file::covering`]: a file whose last offset
//!   is at least the new one's already holds every record of it), so a
//!   zombie cannot drop records the new owner made durable, unless both
//!   check the same name at the same moment and the shorter write lands last.
//!   A replay that starts inside a durable file (a crash after a replay had
//!   moved the progress past the file's first offset) finds that file in the
//!   store ([`archive_file::file_holding`]) and buffers nothing it holds.
//! - On `file://` the fence is check-then-write (see [`crate::progress`]).
//!
//! # The cut
//!
//! For each owned partition the archiver keeps an *observation* (the
//! partition's end offset and the wall-clock time it was read). Once
//! everything below that end offset is durable, every epoch `e` with
//! `end(e) + grace <= observed_ms` is complete on that partition, and the
//! progress object records it. Only once the log is seen to hold the claimed
//! position, though: a stopped partition holds the cut back. The cut is computed from the progress objects
//! of every partition of the topics (the partition count comes from the
//! broker's metadata), so it waits for partitions owned by other members and
//! for partitions nobody has archived yet; it is published only forward.
//!
//! # Layout
//!
//! This file holds the loop, the partitions' hand-overs and shutdown;
//! [`consume`] takes records into rolls, [`durable`] makes them durable and
//! publishes progress and the cut.

mod consume;
mod durable;

use consume::{seek, watermarks};

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use object_store::ObjectStore;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tally_core::config::{Assignment, Config};
use tally_core::time::{kafka_time, now_ms, Epoch, EpochGrid};
use tally_kafka::{
    assign, chosen_partitions, consumer_config, fetched_end, partition_counts, seek_position,
    Admit, Change, Context, Layer, ReadPosition, Tp, Watermarks,
};
use tally_store::paths;

use crate::archive_file::{self, ArchiveRows, FileError};
use crate::progress::{self, Claim, Fenced, ProgressError, Reached};
use crate::promote::Promote;
use tally_store::StoreError;
use tokio::task::{AbortHandle, JoinSet};

/// How often a seek is tried while librdkafka is still starting the fetcher
/// of a newly assigned partition.
const SEEK_ATTEMPTS: usize = 50;
const SEEK_RETRY: Duration = Duration::from_millis(100);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// Records taken per turn of the loop when they are already fetched.
const READY_BATCH: usize = 256;
/// Epochs of `OwnedPartition::covered` kept behind the newest one.
const COVERED_EPOCHS_KEPT: Epoch = 64;

/// Why the archiver stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic `{0}` does not exist on the broker")]
    NoTopic(String),
    #[error(transparent)]
    NoSuchPartition(#[from] tally_kafka::NoSuchPartition),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Progress(#[from] ProgressError),
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
    /// Partitions given up because another archiver claimed them.
    pub lost: u64,
    /// Partitions stopped because their log ends below their progress.
    pub stopped: u64,
}

/// The archiver's side of the rebalance callback: newly assigned partitions
/// are taken paused, from the low watermark. Where to really start is known
/// only after the loop has claimed each partition's progress (a store call,
/// not for the callback), and it seeks there before resuming. Should that
/// seek lose a race with librdkafka starting the fetcher, it is tried again
/// at the next tick, and nothing of the partition is taken until it works.
#[derive(Debug)]
pub(crate) struct Paused;

impl Layer for Paused {
    type Start = ();
    const PAUSE_ASSIGNED: bool = true;

    fn start(&self, _: &impl Consumer<Context<Self>>, _: &str, _: i32) -> (Offset, ()) {
        (Offset::Beginning, ())
    }
}

/// One owned partition.
#[derive(Debug)]
struct OwnedPartition {
    claim: Claim,
    /// Everything below is durable in the master dataset.
    archived_to: i64,
    /// Where reading is: everything below is archived or buffered.
    read: ReadPosition,
    /// The high watermark reported when it was claimed: an end of the log
    /// cached from before is older than that.
    high_at_claim: i64,
    open: BTreeMap<Epoch, ArchiveRows>,
    /// Per epoch seen since the claim, the last offset of a durable file
    /// that holds the epoch's records from the read position on (a crash
    /// replay), or `None` when no file does. Those records are not buffered
    /// again: a later roll would write them under another name (its first
    /// offset), twice. Filled from the store the first time an epoch is seen
    /// ([`archive_file::file_holding`]: the progress may point inside a
    /// file) and when a roll finds its file already written.
    covered: BTreeMap<Epoch, Option<i64>>,
    opened_at: Option<Instant>,
    bytes: usize,
    /// The roll being encoded and written, if one is.
    rolling: Option<Rolling>,
    /// The latest observation that `archived_to` has reached.
    reached: Reached,
    /// The observation being worked towards.
    pending: Option<(i64, i64)>,
}

impl OwnedPartition {
    /// Nothing buffered and nothing being written: `archived_to` is where
    /// reading is, up to records a durable file already held.
    fn idle(&self) -> bool {
        self.open.is_empty() && self.rolling.is_none()
    }
}

/// A partition's roll in flight.
#[derive(Debug)]
struct Rolling {
    id: u64,
    /// The partition's durable position once the roll's files are.
    archived_to: i64,
    task: AbortHandle,
}

/// What a roll task did: the rows of each file it wrote.
struct Rolled {
    id: u64,
    rows_written: Result<Vec<usize>, FileError>,
}

type ArchiveConsumer = StreamConsumer<Context<Paused>>;

/// The loop's state.
struct Archiver {
    store: Arc<dyn ObjectStore>,
    consumer: Arc<ArchiveConsumer>,
    topics: Vec<String>,
    grid: EpochGrid,
    limits: tally_core::event::Limits,
    /// The properties every file promotes to columns: those the views use.
    promote: Promote,
    grace: i64,
    seek_back: i64,
    roll_bytes: usize,
    roll_interval: Duration,
    parts: BTreeMap<Tp, OwnedPartition>,
    /// The roll tasks in flight, at most one per partition.
    rolls: JoinSet<Rolled>,
    next_roll: u64,
    summary: ArchiveSummary,
}

/// Run the archiver until `shutdown` resolves; on shutdown everything buffered
/// is rolled, the progress and cut are published, and the group is left.
pub async fn run(
    cfg: &Config,
    store: Arc<dyn ObjectStore>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<ArchiveSummary, ArchiveError> {
    let mut a = Archiver::start(cfg, store).await?;
    let consumer = a.consumer.clone();
    let roll_interval = a.roll_interval;
    let mut tick = tokio::time::interval(Duration::from_millis(
        (roll_interval.as_millis() as u64 / 4).clamp(10, 1000),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cut_tick =
        tokio::time::interval(roll_interval.clamp(Duration::from_secs(1), Duration::from_secs(10)));
    cut_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        // Before any roll: a partition revoked in the callback is never
        // written again by this process.
        a.apply_changes().await?;
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = consumer.context().changes().recorded() => {}
            _ = tick.tick() => a.on_tick().await?,
            _ = cut_tick.tick() => a.publish_cut().await?,
            Some(joined) = a.rolls.join_next(), if !a.rolls.is_empty() => a.on_rolled(joined).await?,
            msg = consumer.recv() => {
                a.on_message(msg).await?;
                // Records already fetched are taken without another trip
                // through the select (its timers and wakers), a batch at
                // most, and never past a rebalance the callback recorded.
                for _ in 1..READY_BATCH {
                    if consumer.context().changes().pending() {
                        break;
                    }
                    let Some(msg) = consumer.recv().now_or_never() else {
                        break;
                    };
                    a.on_message(msg).await?;
                }
            }
        }
    }
    // The last reference must go in `finish`, off the runtime (closing waits).
    drop(consumer);
    a.finish().await
}

impl Archiver {
    async fn start(cfg: &Config, store: Arc<dyn ObjectStore>) -> Result<Archiver, ArchiveError> {
        let group = format!("{}-archive", cfg.kafka.group);
        let instance_id = cfg
            .kafka
            .instance_id
            .as_ref()
            .map(|id| format!("{id}-archive"));
        let client = consumer_config(&cfg.kafka, &group, instance_id.as_deref());
        let consumer: Arc<ArchiveConsumer> =
            Arc::new(client.create_with_context(Context::new(Paused))?);
        let mut a = Archiver {
            store,
            consumer,
            topics: cfg.kafka.topics.clone(),
            grid: cfg.epochs.grid(),
            limits: cfg.events.limits(),
            promote: Promote::of(cfg),
            grace: cfg.epochs.grace.0,
            seek_back: cfg.kafka.seek_back,
            roll_bytes: cfg.archive.roll_bytes.max(1),
            roll_interval: cfg.archive.roll_interval.as_duration(),
            parts: BTreeMap::new(),
            rolls: JoinSet::new(),
            next_roll: 0,
            summary: ArchiveSummary::default(),
        };
        // Fail early on a missing topic, in both modes.
        let counts = a.partition_counts().await?;
        match cfg.kafka.assignment {
            Assignment::Group => {
                let topics: Vec<&str> = a.topics.iter().map(String::as_str).collect();
                a.consumer.subscribe(&topics)?;
            }
            Assignment::All | Assignment::Partitions => {
                let chosen = chosen_partitions(&counts, cfg.kafka.listed_partitions())?;
                assign(a.consumer.as_ref(), &chosen)
            }
        }
        a.summary.cut = progress::published_cut(a.store.as_ref()).await?;
        Ok(a)
    }

    /// Every topic with its partition count, from the broker's metadata.
    async fn partition_counts(&self) -> Result<Vec<(String, i32)>, ArchiveError> {
        let (c, topics) = (self.consumer.clone(), self.topics.clone());
        let counts =
            tokio::task::spawn_blocking(move || partition_counts(c.as_ref(), &topics)).await??;
        if let Some((topic, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(ArchiveError::NoTopic(topic.clone()));
        }
        Ok(counts)
    }

    /// Apply what the rebalance callback recorded.
    async fn apply_changes(&mut self) -> Result<(), ArchiveError> {
        let changes = self.consumer.context().changes().take();
        if changes.is_empty() {
            return Ok(());
        }
        // Only the final state matters: a partition assigned and revoked
        // again before we got here is not claimed.
        let mut assigned: Vec<Tp> = Vec::new();
        for c in changes {
            match c {
                Change::Assigned(tp, ()) => {
                    self.drop_part(&tp, "reassigned");
                    assigned.push(tp);
                }
                Change::Revoked(tp) => {
                    self.drop_part(&tp, "revoked");
                    assigned.retain(|a| *a != tp);
                }
                Change::RevokedAll => {
                    let all: Vec<Tp> = self.parts.keys().cloned().collect();
                    for tp in all {
                        self.drop_part(&tp, "revoked");
                    }
                    assigned.clear();
                }
            }
        }
        for tp in assigned {
            self.take_partition(tp).await?;
        }
        Ok(())
    }

    /// Forget a partition and what it buffered (the next owner re-reads it).
    fn drop_part(&mut self, tp: &Tp, why: &str) {
        if let Some(part) = self.parts.remove(tp) {
            // Its files may still be written (as a zombie's may); its
            // progress is not advanced.
            if let Some(rolling) = &part.rolling {
                rolling.task.abort();
            }
            let buffered: usize = part.open.values().map(ArchiveRows::len).sum();
            tracing::info!(topic = %tp.0, partition = tp.1, buffered, why, "partition dropped");
        }
    }

    /// Claim an assigned partition, seek before its position and resume it.
    async fn take_partition(&mut self, tp: Tp) -> Result<(), ArchiveError> {
        let (topic, p) = (&tp.0, tp.1);
        let w = watermarks(&self.consumer, topic, p).await?;
        let claim = progress::claim(self.store.as_ref(), topic, p, w.low).await?;
        let target = claim.archived_to;
        let from = seek_position(w, target, self.seek_back);
        tally_kafka::fault::reseeking(self.consumer.as_ref());
        // A seek that fails stays pending (the next tick tries again) and
        // nothing is taken meanwhile: reading on from the log's start, where
        // the partition was assigned, would be taken for a read from `from`
        // should the failed seek take effect after all.
        let mut read = ReadPosition::seek(target, from, w.low);
        if seek(&self.consumer, topic, p, from).await {
            read.seek_done();
        }
        metrics::gauge!("tally_archive_partition_stopped",
            "topic" => topic.clone(), "partition" => p.to_string())
        .set(0.0);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, p);
        self.consumer.resume(&tpl)?;
        tracing::info!(topic = %topic, partition = p, archived_to = target, seek = from, "partition claimed");
        self.parts.insert(
            tp,
            OwnedPartition {
                archived_to: target,
                read,
                high_at_claim: w.high,
                open: BTreeMap::new(),
                covered: BTreeMap::new(),
                opened_at: None,
                bytes: 0,
                rolling: None,
                reached: claim.reached,
                pending: Some((w.high, now_ms())),
                claim,
            },
        );
        Ok(())
    }

    /// Another archiver claimed the partition: drop it and stop fetching it
    /// (the group revokes it from us anyway, or has already).
    fn lose(&mut self, tp: &Tp) {
        tracing::warn!(topic = %tp.0, partition = tp.1,
            "another archiver claimed this partition: dropping it (zombie fenced)");
        self.summary.lost += 1;
        self.drop_part(tp, "claimed elsewhere");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        if let Err(e) = self.consumer.pause(&tpl) {
            tracing::debug!(error = %e, "pausing a lost partition failed");
        }
    }

    /// Roll everything owned, publish progress and cut, leave the group.
    async fn finish(mut self) -> Result<ArchiveSummary, ArchiveError> {
        self.apply_changes().await?;
        let owned: Vec<Tp> = self.parts.keys().cloned().collect();
        for tp in &owned {
            self.roll(tp).await?;
            self.settle_roll(tp).await?;
            self.observe(tp).await?;
        }
        self.publish_cut().await?;
        let Archiver {
            consumer, summary, ..
        } = self;
        // Unsubscribe, not just close: closing a static member (with
        // `kafka.instance_id`) does not send LeaveGroup, unsubscribing does,
        // so the others take its partitions now. Both wait for the broker:
        // not on a runtime thread.
        tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            drop(consumer);
        })
        .await?;
        Ok(summary)
    }
}
