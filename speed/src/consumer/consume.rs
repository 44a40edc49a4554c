//! The consume thread: reads records, folds them, cuts chunks for the
//! flusher and acts on its answers (see the [module doc](super)).
//!
//! One loop on a dedicated thread: the flush, commit and cut timers are
//! checked between batches, the consumer queue (rebalances, errors, commit
//! results) is served before each batch, and the loop waits for records only
//! when idle, briefly, so rebalances are never kept waiting.
//!
//! Seeks (after a failed chunk, or when a partition's first record after a
//! seek is past its target) are done between batches, and a seek that fails
//! is retried: until one succeeds the partition takes nothing, so a consumer
//! left ahead of the target can never make a chunk skip records. A partition
//! whose log ends below its stored offset is paused and left alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc as tmpsc;
use tracing::{debug, error, info, warn};

use tally_core::config::{self, Config};
use tally_core::time::Epoch;
use tally_kafka::{
    assign, chosen_partitions, consumer_config, partition_counts, plan_seek, Reader, Tp,
};

use super::starts::{SpeedConsumer, Starts};
use super::state::{Next, PartitionState, Rec, State};
use super::Feedback;
use crate::dead_letter::DeadLetters;
use crate::delta::{Chunk, Folder, Range};
use crate::error::SpeedError;
use crate::redis_con::SyncRedis;
use crate::resume::{rebuild_offset, snapshot_cut};

/// How often the snapshot cut is read again.
const SNAPSHOT_CUT_REFRESH: Duration = Duration::from_secs(30);
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// Records taken per clock read (a few milliseconds of work at most).
const POLL_BATCH: usize = 1024;
/// The longest wait for records when idle (rebalances wait as long).
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How soon to look again when a flush was put off because Redis is busy.
const RECHECK: Duration = Duration::from_millis(5);
/// A delta is cut at these sizes even while Redis is busy: they bound its
/// memory (cells: (slice, bucket, group) entries, up to about 1 KB each with
/// their distinct values) and the records re-read after a crash.
const MAX_CELLS: usize = 50_000;
const MAX_EVENTS: u64 = 2_000_000;
/// How long a seek may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon a failed seek is tried again.
const SEEK_RETRY: Duration = Duration::from_millis(200);
/// librdkafka statistics (for the lag metrics) every this many ms.
const STATISTICS_INTERVAL_MS: &str = "5000";

pub(super) struct ConsumeLoop {
    reader: Reader<Starts>,
    st: State,
    chunk_tx: tmpsc::Sender<Chunk>,
    feedback_rx: mpsc::Receiver<Feedback>,
    stop: Arc<AtomicBool>,
    flush_every: Duration,
    seek_back: i64,
    /// When pending seeks may be tried (again).
    seek_at: Instant,
    /// Partitions stopped because their log ends below the stored offset.
    stopped: u64,
    store: Arc<dyn ObjectStore>,
    handle: tokio::runtime::Handle,
}

impl ConsumeLoop {
    pub(super) fn new(
        cfg: &Config,
        cut: Option<Epoch>,
        chunk_tx: tmpsc::Sender<Chunk>,
        feedback_rx: mpsc::Receiver<Feedback>,
        stop: Arc<AtomicBool>,
        store: Arc<dyn ObjectStore>,
        handle: tokio::runtime::Handle,
    ) -> Result<Self, SpeedError> {
        let k = &cfg.kafka;
        let starts = Starts {
            redis: SyncRedis::open(&cfg.redis)?,
            layout: cfg.redis.layout(),
            grid: cfg.epochs.grid(),
            seek_back: k.seek_back,
            snapshot_cut: Mutex::new(cut),
        };
        let mut client = consumer_config(k, &k.group, k.instance_id.as_deref());
        client.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        let reader = Reader::new(&client, starts, POLL_BATCH)?;
        let consumer = reader.consumer();
        match k.assignment {
            config::Assignment::Group => {
                let topics: Vec<&str> = k.topics.iter().map(String::as_str).collect();
                consumer.subscribe(&topics)?;
            }
            config::Assignment::All | config::Assignment::Partitions => {
                let counts = partition_counts(consumer, &k.topics)?;
                assign(
                    consumer,
                    &chosen_partitions(&counts, k.listed_partitions())?,
                )
            }
        }
        Ok(ConsumeLoop {
            reader,
            st: State::new(
                Folder::new(cfg.views.clone(), cfg.epochs.grid())
                    .with_dedup_window(cfg.speed.dedup_window),
                cfg.redis.layout(),
                cfg.events.limits(),
                DeadLetters::new(k)?,
            ),
            chunk_tx,
            feedback_rx,
            stop,
            flush_every: cfg.speed.flush_interval.as_duration(),
            seek_back: k.seek_back,
            seek_at: Instant::now(),
            stopped: 0,
            store,
            handle,
        })
    }

    fn consumer(&self) -> &SpeedConsumer {
        self.reader.consumer()
    }

    fn starts(&self) -> &Starts {
        self.consumer().context().layer()
    }

    /// Consume until stopped; returns how many partitions were stopped
    /// because their log ends below their stored offset.
    pub(super) fn run(&mut self) -> Result<u64, SpeedError> {
        let mut next_flush = Instant::now() + self.flush_every;
        let mut next_commit = Instant::now() + COMMIT_EVERY;
        let mut next_cut = Instant::now() + SNAPSHOT_CUT_REFRESH;
        'consume: loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            let now = Instant::now();
            if now >= next_flush || stopping {
                if !self.take_assignment_changes() {
                    break;
                }
                self.handle_feedback()?;
                // Cut only once the flusher has taken the last chunk: while
                // Redis is busy, folding on makes the next call worth more.
                let caught_up = self.chunk_tx.capacity() == self.chunk_tx.max_capacity();
                let u = &self.st.unflushed;
                let full = u.cells >= MAX_CELLS || u.events >= MAX_EVENTS;
                if caught_up || full || stopping {
                    if !self.st.flush(&self.chunk_tx) {
                        break;
                    }
                    next_flush = Instant::now() + self.flush_every;
                } else {
                    next_flush = now + RECHECK;
                }
                if stopping {
                    break;
                }
            }
            if now >= next_commit {
                self.commit();
                next_commit = now + COMMIT_EVERY;
            }
            if now >= next_cut {
                self.refresh_snapshot_cut();
                next_cut = now + SNAPSHOT_CUT_REFRESH;
            }
            // The consumer queue first: rebalances (which route partitions
            // to the fetch queue and record their changes), errors, commit
            // results, and records fetched before their partition was routed.
            while let Some(r) = self.reader.consumer().poll(Duration::ZERO) {
                if !on_polled(&mut self.st, self.reader.consumer(), &self.chunk_tx, r) {
                    break 'consume;
                }
            }
            if !self.take_assignment_changes() {
                break;
            }
            if self.st.seeks_pending && now >= self.seek_at {
                self.seek_pending();
            }
            if !self.st.past_end.is_empty() {
                self.stop_past_end();
            }
            // Then records, a batch at a time without waiting: no clock read
            // per record. Wait only when idle, briefly, so that rebalances on
            // the consumer queue are not kept waiting.
            if on_batch(&mut self.st, &mut self.reader, Duration::ZERO) == 0 {
                let wait = next_flush.saturating_duration_since(now);
                on_batch(&mut self.st, &mut self.reader, wait.min(IDLE_WAIT));
            }
        }
        self.st.dead.flush(Duration::from_secs(10));
        Ok(self.stopped)
    }

    fn take_assignment_changes(&mut self) -> bool {
        let changes = self.reader.consumer().context().changes();
        self.st.take_assignment_changes(changes, &self.chunk_tx)
    }

    fn handle_feedback(&mut self) -> Result<(), SpeedError> {
        while let Ok(fb) = self.feedback_rx.try_recv() {
            match fb {
                Feedback::Applied { ranges } => {
                    for r in ranges {
                        if let Some(p) = self.st.parts.get_mut(&(r.topic, r.partition)) {
                            p.applied_to = p.applied_to.max(r.end);
                        }
                    }
                }
                Feedback::Failed { generation, ranges } if generation == self.st.generation => {
                    self.resync(ranges)?;
                }
                Feedback::Failed { .. } => {} // cut before the last re-seek
            }
        }
        Ok(())
    }

    /// After a failed chunk: drop the aggregates and re-read every partition,
    /// the failed chunk's from what Redis stores, the others from their last
    /// chunk (partitions stopped at the end of their log stay stopped).
    fn resync(&mut self, failed: Vec<(Range, Option<i64>)>) -> Result<(), SpeedError> {
        self.st.bump();
        self.st.unflushed.clear();
        let mut targets: HashMap<Tp, (i64, bool)> = self
            .st
            .parts
            .iter()
            .filter(|(_, p)| !p.read.is_stopped())
            .map(|(tp, p)| (tp.clone(), (p.start, p.fresh)))
            .collect();
        for (r, stored) in failed {
            let tp = (r.topic, r.partition);
            if !targets.contains_key(&tp) {
                continue; // revoked since
            }
            let target = match stored {
                Some(s) => {
                    if s != r.start {
                        info!(topic = %tp.0, partition = tp.1, stored = s, "fenced: re-reading from the stored offset");
                    }
                    (s, false)
                }
                None if r.fresh => (r.start, true),
                None => {
                    let starts = self.starts();
                    let (cut, grid) = (starts.snapshot_cut(), starts.grid);
                    let t = rebuild_offset(self.consumer(), &tp.0, tp.1, cut, grid)?;
                    warn!(topic = %tp.0, partition = tp.1, target = t, "Redis has no offset for this partition: rebuilding from the cut");
                    (t, true)
                }
            };
            targets.insert(tp, target);
        }
        for (tp, (target, fresh)) in targets {
            let read = plan_seek(self.consumer(), &tp.0, tp.1, target, self.seek_back);
            if let Some(p) = self.st.parts.get_mut(&tp) {
                let (committed_to, applied_to) = (p.committed_to, p.applied_to);
                *p = PartitionState::new(read, fresh, p.group);
                p.committed_to = committed_to;
                p.applied_to = applied_to;
            }
        }
        tally_kafka::fault::reseeking(self.consumer());
        self.st.seeks_pending = true;
        self.seek_pending();
        Ok(())
    }

    /// Do the seeks partitions wait for. One that fails leaves its partition
    /// taking nothing, and is tried again shortly.
    fn seek_pending(&mut self) {
        let consumer = self.reader.consumer();
        let mut failed = false;
        for ((topic, partition), p) in &mut self.st.parts {
            let Some(from) = p.read.pending_seek() else {
                continue;
            };
            match consumer.seek(topic, *partition, Offset::Offset(from), SEEK_TIMEOUT) {
                Ok(()) => p.read.seek_done(),
                Err(e) => {
                    warn!(error = %e, %topic, partition, from,
                        "seek failed: nothing of this partition is taken until a retry succeeds");
                    metrics::counter!("tally_speed_seek_failures_total").increment(1);
                    failed = true;
                    tally_kafka::fault::seek_failed(consumer, topic, *partition);
                }
            }
        }
        self.st.seeks_pending = failed;
        self.seek_at = Instant::now() + SEEK_RETRY;
    }

    /// Pause the partitions whose log ends below their stored offset: their
    /// records are not taken, and the operator decides (see the error).
    fn stop_past_end(&mut self) {
        for ((topic, partition), e) in std::mem::take(&mut self.st.past_end) {
            let keys = self.starts().layout.keys_of(partition);
            let (offsets, seen) = (keys.offsets(), keys.seen());
            error!(%topic, partition, "{e}. Once the log is what it should be, delete field `{topic}/{partition}` of Redis hashes `{offsets}` and `{seen}` (the partition is then rebuilt from the snapshot cut) and restart the speed layer");
            metrics::gauge!("tally_speed_partition_stopped",
                "topic" => topic.clone(), "partition" => partition.to_string())
            .set(1.0);
            self.stopped += 1;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            if let Err(e) = self.reader.consumer().pause(&tpl) {
                warn!(error = %e, %topic, partition, "pausing a stopped partition failed (its records are dropped anyway)");
            }
        }
    }

    /// Commit applied offsets to Kafka: advisory, for lag tooling.
    fn commit(&mut self) {
        let mut tpl = TopicPartitionList::new();
        for ((t, p), part) in &mut self.st.parts {
            if part.applied_to > part.committed_to {
                let _ = tpl.add_partition_offset(t, *p, Offset::Offset(part.applied_to));
                part.committed_to = part.applied_to;
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.reader.consumer().commit(&tpl, CommitMode::Async) {
                if !matches!(e, KafkaError::ConsumerCommit(_)) {
                    debug!(error = %e, "advisory commit failed");
                }
            }
        }
    }

    fn refresh_snapshot_cut(&mut self) {
        let views: Vec<_> = self.st.folder.views().cloned().collect();
        match self.handle.block_on(snapshot_cut(&self.store, &views)) {
            Ok(cut) => self.starts().set_snapshot_cut(cut),
            Err(e) => warn!(error = %e, "cannot read the snapshot cut"),
        }
    }
}

/// Handle one result from the consumer queue. Returns false if the flusher
/// is gone.
fn on_polled(
    st: &mut State,
    consumer: &SpeedConsumer,
    tx: &tmpsc::Sender<Chunk>,
    polled: KafkaResult<BorrowedMessage<'_>>,
) -> bool {
    match polled {
        // Ends of partitions not routed to the reader: no topic to go by.
        Err(KafkaError::PartitionEOF(_)) => {}
        Err(e) => warn!(error = %e, "kafka poll error"),
        Ok(msg) => {
            let changes = consumer.context().changes();
            if changes.pending() && !st.take_assignment_changes(changes, tx) {
                return false;
            }
            st.on_record(&Rec {
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
                timestamp_ms: msg.timestamp().to_millis(),
                key: msg.key(),
                payload: msg.payload().unwrap_or(&[]),
            });
        }
    }
    true
}

/// Fold a batch from the reader's queue. Returns how many records it held.
fn on_batch(st: &mut State, reader: &mut Reader<Starts>, timeout: Duration) -> usize {
    let records = reader.poll(timeout);
    st.on_records(records.iter().filter_map(|r| {
        if r.is_end() {
            return Some(Next::End(r.topic(), r.partition(), r.offset()));
        }
        if let Some(e) = r.error() {
            warn!(error = %e, topic = r.topic(), partition = r.partition(), "kafka fetch error");
            return None;
        }
        Some(Next::Rec(Rec {
            topic: r.topic(),
            partition: r.partition(),
            offset: r.offset(),
            timestamp_ms: r.timestamp_ms(),
            key: r.key(),
            payload: r.payload(),
        }))
    }));
    records.len()
}
