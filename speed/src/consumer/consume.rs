//! The consume thread: reads records, folds them, cuts chunks for the
//! flusher and acts on its answers (see the [module doc](super)).
//!
//! One loop on a dedicated thread: the flush, commit and cut timers are
//! checked between batches, the consumer queue (rebalances, errors, commit
//! results) is served before each batch, and the loop waits for records only
//! when idle, briefly, so rebalances are never kept waiting.

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
use tracing::{debug, info, warn};

use tally_core::config::{self, Config};
use tally_core::keys::Keys;
use tally_core::time::Epoch;
use tally_kafka::resume::seek_position_on;
use tally_kafka::{assign_all, consumer_config, partition_counts, Reader, Tp};

use super::starts::{SpeedConsumer, Starts};
use super::state::{PartitionState, Rec, State};
use super::Feedback;
use crate::dead_letter::DeadLetters;
use crate::delta::{Chunk, Folder, Range};
use crate::error::SpeedError;
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
            redis: redis::Client::open(cfg.redis.url.as_str())?,
            keys: Keys::new(&cfg.redis.key_prefix),
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
            config::Assignment::All => {
                assign_all(consumer, &partition_counts(consumer, &k.topics)?)
            }
        }
        Ok(ConsumeLoop {
            reader,
            st: State::new(
                Folder::new(cfg.views.clone(), cfg.epochs.grid()),
                cfg.events.limits(),
                DeadLetters::new(&k.brokers, &k.dead_letter_topic)?,
            ),
            chunk_tx,
            feedback_rx,
            stop,
            flush_every: cfg.speed.flush_interval.as_duration(),
            seek_back: k.seek_back,
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

    pub(super) fn run(&mut self) -> Result<(), SpeedError> {
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
            // Then records, a batch at a time without waiting: no clock read
            // per record. Wait only when idle, briefly, so that rebalances on
            // the consumer queue are not kept waiting.
            if on_batch(&mut self.st, &mut self.reader, Duration::ZERO) == 0 {
                let wait = next_flush.saturating_duration_since(now);
                on_batch(&mut self.st, &mut self.reader, wait.min(IDLE_WAIT));
            }
        }
        self.st.dead.flush(Duration::from_secs(10));
        Ok(())
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
    /// chunk.
    fn resync(&mut self, failed: Vec<(Range, Option<i64>)>) -> Result<(), SpeedError> {
        self.st.bump();
        self.st.unflushed.clear();
        let mut targets: HashMap<Tp, (i64, bool)> = self
            .st
            .parts
            .iter()
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
            self.reseek(&tp, target, fresh);
        }
        Ok(())
    }

    fn reseek(&mut self, tp: &Tp, target: i64, fresh: bool) {
        let consumer = self.reader.consumer();
        let pos = seek_position_on(consumer, &tp.0, tp.1, target, self.seek_back);
        if let Err(e) = consumer.seek(&tp.0, tp.1, Offset::Offset(pos), SEEK_TIMEOUT) {
            warn!(error = %e, topic = %tp.0, partition = tp.1, "seek failed; the next chunk will be fenced and retried");
        }
        if let Some(p) = self.st.parts.get_mut(tp) {
            let (committed_to, applied_to) = (p.committed_to, p.applied_to);
            *p = PartitionState::new(target, fresh);
            p.committed_to = committed_to;
            p.applied_to = applied_to;
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
    for r in &records {
        if let Some(e) = r.error() {
            warn!(error = %e, topic = r.topic(), partition = r.partition(), "kafka fetch error");
            continue;
        }
        st.on_record(&Rec {
            topic: r.topic(),
            partition: r.partition(),
            offset: r.offset(),
            timestamp_ms: r.timestamp_ms(),
            key: r.key(),
            payload: r.payload(),
        });
    }
    records.len()
}
