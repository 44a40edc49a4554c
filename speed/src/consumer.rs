//! The consume loop: records in, fenced chunks out.
//!
//! A dedicated thread polls an rdkafka `BaseConsumer`, decodes each record,
//! folds it into its partition's delta and, every flush interval, cuts the
//! deltas into chunks and hands them to the flusher over a bounded queue. When
//! Redis is slow the queue fills, the thread blocks, polling stops, and Kafka
//! is the buffer: memory stays flat whatever the lag.
//!
//! The flusher (a tokio task) applies chunks through the fencing script and
//! sends back what happened. A fenced chunk means someone else moved the
//! partition's offset (a replay or a zombie): the partition is re-read from
//! the stored offset. A reset means Redis lost its memory: the partition is
//! rebuilt from the cut. Feedback carries a generation so that answers about
//! chunks cut before a re-seek are ignored.
//!
//! Invariant per partition: records are folded in strictly increasing offset
//! order, each at most once per generation (anything below the delta's end is
//! dropped), so every applied chunk is exactly the records of its range.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc as tmpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use tally_core::config::{self, Config};
use tally_core::event::decode;
use tally_core::keys::Keys;
use tally_core::time::{Epoch, EpochClock};

use crate::apply::{Applier, Outcome};
use crate::dead_letter::{DeadLetters, Source};
use crate::delta::{Chunk, Folder, PartitionDelta};
use crate::error::SpeedError;
use crate::resume::{current_cut, rebuild_offset, seek_position};

const CUT_REFRESH: Duration = Duration::from_secs(30);
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Run the speed layer until `shutdown` is cancelled: flush, then return.
pub async fn run(
    cfg: Arc<Config>,
    store: Arc<dyn ObjectStore>,
    shutdown: CancellationToken,
) -> Result<(), SpeedError> {
    let mut applier = Applier::connect(&cfg).await?;
    let cut = current_cut(&store, &cfg.views).await?;
    let (chunk_tx, mut chunk_rx) = tmpsc::channel::<Vec<Chunk>>(cfg.speed.queue_capacity);
    let (feedback_tx, feedback_rx) = mpsc::channel::<Feedback>();
    let stop = Arc::new(AtomicBool::new(false));

    let thread = {
        let cfg = cfg.clone();
        let stop = stop.clone();
        let handle = tokio::runtime::Handle::current();
        let store = store.clone();
        std::thread::Builder::new()
            .name("tally-speed-consume".into())
            .spawn(move || {
                let mut looper =
                    ConsumeLoop::new(&cfg, cut, chunk_tx, feedback_rx, stop, store, handle)?;
                looper.run()
            })
            .map_err(|e| SpeedError::Thread(e.to_string()))?
    };

    // Stop the consume thread when asked; it flushes and closes the queue.
    let stopper = {
        let stop = stop.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stop.store(true, Ordering::SeqCst);
        })
    };

    let folder = Folder::new(cfg.views.clone(), cfg.epochs.clock());
    let mut backoff = Duration::from_millis(50);
    while let Some(chunks) = chunk_rx.recv().await {
        let started = Instant::now();
        loop {
            match applier.apply(&chunks, &folder, now_ms()).await {
                Ok(outcomes) => {
                    metrics::histogram!("tally_speed_flush_seconds")
                        .record(started.elapsed().as_secs_f64());
                    for (c, o) in chunks.iter().zip(outcomes) {
                        report(&feedback_tx, c, o);
                    }
                    backoff = Duration::from_millis(50);
                    break;
                }
                Err(e) => {
                    // Nothing was applied, or only whole chunks were (each script
                    // call is atomic): retrying is safe, fencing sorts out the rest.
                    warn!(error = %e, "applying to Redis failed; retrying");
                    metrics::counter!("tally_speed_flush_errors_total").increment(1);
                    if shutdown.is_cancelled() && started.elapsed() > Duration::from_secs(10) {
                        warn!("giving up on unflushed chunks at shutdown; they will be re-read from Kafka");
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
    stopper.abort();
    let result = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| SpeedError::Thread(e.to_string()))?
        .map_err(|_| SpeedError::Thread("consume thread panicked".into()))?;
    info!("speed layer stopped");
    result
}

fn report(tx: &mpsc::Sender<Feedback>, c: &Chunk, o: Outcome) {
    let tp = (c.topic.clone(), c.partition);
    let fb = match o {
        Outcome::Applied { end } => {
            metrics::counter!("tally_speed_events_total").increment(c.events);
            Feedback::Applied { tp, end }
        }
        Outcome::Fenced { stored } => {
            metrics::counter!("tally_speed_fenced_chunks_total").increment(1);
            debug!(topic = %c.topic, partition = c.partition, start = c.start, stored, "chunk fenced");
            Feedback::Fenced {
                tp,
                generation: c.generation,
                stored,
            }
        }
        Outcome::Reset => {
            metrics::counter!("tally_speed_resets_total").increment(1);
            Feedback::Reset {
                tp,
                generation: c.generation,
            }
        }
    };
    let _ = tx.send(fb);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

type Tp = (String, i32);

/// What the flusher tells the consume loop.
#[derive(Debug)]
enum Feedback {
    Applied {
        tp: Tp,
        end: i64,
    },
    Fenced {
        tp: Tp,
        generation: u64,
        stored: i64,
    },
    Reset {
        tp: Tp,
        generation: u64,
    },
}

/// A change of assignment, recorded in the rebalance callback.
#[derive(Debug)]
enum Assignment {
    Assigned { tp: Tp, target: i64, fresh: bool },
    Revoked { tp: Tp },
}

/// rdkafka context: decides where assigned partitions start, and exports lag.
struct SpeedContext {
    redis: redis::Client,
    keys: Keys,
    clock: EpochClock,
    seek_back: i64,
    cut: Mutex<Option<Epoch>>,
    changes: Mutex<Vec<Assignment>>,
    changed: AtomicBool,
}

impl ClientContext for SpeedContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    metrics::gauge!("tally_speed_lag", "topic" => topic.clone(), "partition" => p.to_string())
                        .set(part.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for SpeedContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut changes = Vec::new();
                for el in tpl.elements() {
                    let (topic, p) = (el.topic().to_owned(), el.partition());
                    let (target, fresh) = self.start_of(consumer, &topic, p);
                    let low = consumer
                        .fetch_watermarks(&topic, p, Duration::from_secs(10))
                        .map(|(l, _)| l)
                        .unwrap_or(0);
                    changes.push((
                        topic,
                        p,
                        target,
                        fresh,
                        seek_position(low, target, self.seek_back),
                    ));
                }
                for (topic, p, _, _, pos) in &changes {
                    let _ = tpl.set_partition_offset(topic, *p, Offset::Offset(*pos));
                }
                if let Err(e) = consumer.assign(tpl) {
                    warn!(error = %e, "assign failed");
                }
                let mut q = self.changes.lock().unwrap_or_else(|e| e.into_inner());
                for (topic, p, target, fresh, pos) in changes {
                    info!(%topic, partition = p, target, fresh, seek = pos, "partition assigned");
                    q.push(Assignment::Assigned {
                        tp: (topic, p),
                        target,
                        fresh,
                    });
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut q = self.changes.lock().unwrap_or_else(|e| e.into_inner());
                for el in tpl.elements() {
                    q.push(Assignment::Revoked {
                        tp: (el.topic().to_owned(), el.partition()),
                    });
                }
                if let Err(e) = consumer.unassign() {
                    warn!(error = %e, "unassign failed");
                }
            }
            other => {
                warn!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
        self.changed.store(true, Ordering::SeqCst);
    }
}

/// Assign every partition of `topics` to this process, starting each where
/// the group path would (see [`SpeedContext::start_of`]).
fn assign_all(consumer: &BaseConsumer<SpeedContext>, topics: &[String]) -> Result<(), SpeedError> {
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition(t.name(), p.id());
            }
        }
    }
    // The same code as a group assignment: it computes the offsets and queues the changes.
    consumer.context().rebalance(
        consumer,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS,
        &mut tpl,
    );
    Ok(())
}

impl SpeedContext {
    /// Where a newly assigned partition starts: (target, fresh).
    fn start_of(&self, consumer: &BaseConsumer<Self>, topic: &str, p: i32) -> (i64, bool) {
        let stored: Result<Option<i64>, redis::RedisError> =
            self.redis.get_connection().and_then(|mut c| {
                redis::cmd("HGET")
                    .arg(self.keys.offsets())
                    .arg(Keys::offset_field(topic, p))
                    .query(&mut c)
            });
        let cut = *self.cut.lock().unwrap_or_else(|e| e.into_inner());
        match stored {
            Ok(Some(o)) => (o, false),
            Ok(None) => match rebuild_offset(consumer, topic, p, cut, self.clock) {
                Ok(o) => (o, true),
                Err(e) => {
                    warn!(error = %e, topic, partition = p, "cannot find the rebuild offset; starting at 0");
                    (0, true)
                }
            },
            Err(e) => {
                // Unknown position: start from the rebuild point but not as a
                // rebuild; the script fences or resets it once Redis answers.
                warn!(error = %e, topic, partition = p, "Redis unreachable at assignment");
                (
                    rebuild_offset(consumer, topic, p, cut, self.clock).unwrap_or(0),
                    false,
                )
            }
        }
    }
}

/// One assigned partition.
struct Part {
    delta: PartitionDelta,
    /// Set after a seek until the first record arrives (to detect broker skips).
    awaiting_first: bool,
    committed_to: i64,
    applied_to: i64,
}

/// What the hot path mutates, apart from the consumer it polls.
struct State {
    folder: Folder,
    limits: tally_core::event::Limits,
    dead: DeadLetters,
    parts: HashMap<Tp, Part>,
    next_generation: u64,
}

impl State {
    fn on_record(&mut self, msg: &rdkafka::message::BorrowedMessage<'_>) {
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        // Avoid allocating the key for the lookup on the hot path.
        let Some(part) = self
            .parts
            .iter_mut()
            .find(|((t, p), _)| *p == partition && t == topic)
            .map(|(_, part)| part)
        else {
            return; // not (or no longer) ours
        };
        if offset < part.delta.end {
            return; // below the target of a seek, or already folded
        }
        if part.awaiting_first {
            part.awaiting_first = false;
            if offset > part.delta.end {
                warn!(topic, partition, expected = part.delta.end, got = offset,
                    "first record after a seek is past the target: the broker skipped records (raise kafka.seek_back) or the log has a gap");
            }
        }
        part.delta.end = offset + 1;
        let kafka_ts = msg.timestamp().to_millis().unwrap_or_else(now_ms);
        let payload = msg.payload().unwrap_or(&[]);
        match decode(payload, kafka_ts, &self.limits) {
            Ok(event) => self.folder.fold(&mut part.delta, topic, kafka_ts, &event),
            Err(reject) => self.dead.send(
                msg.key(),
                payload,
                &reject,
                Source {
                    topic,
                    partition,
                    offset,
                },
            ),
        }
    }

    fn take_assignment_changes(&mut self, ctx: &SpeedContext) {
        if !ctx.changed.swap(false, Ordering::SeqCst) {
            return;
        }
        let changes: Vec<Assignment> =
            std::mem::take(&mut *ctx.changes.lock().unwrap_or_else(|e| e.into_inner()));
        for c in changes {
            match c {
                Assignment::Assigned { tp, target, fresh } => {
                    let generation = self.bump();
                    self.parts.insert(
                        tp,
                        Part {
                            delta: PartitionDelta::new(target, fresh, generation),
                            awaiting_first: true,
                            committed_to: target,
                            applied_to: target,
                        },
                    );
                }
                Assignment::Revoked { tp } => {
                    // Unflushed deltas are dropped: the next owner resumes from
                    // the offset in Redis, which does not include them.
                    self.parts.remove(&tp);
                }
            }
        }
    }

    fn bump(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }
}

struct ConsumeLoop {
    consumer: BaseConsumer<SpeedContext>,
    st: State,
    chunk_tx: tmpsc::Sender<Vec<Chunk>>,
    feedback_rx: mpsc::Receiver<Feedback>,
    stop: Arc<AtomicBool>,
    flush_every: Duration,
    seek_back: i64,
    store: Arc<dyn ObjectStore>,
    handle: tokio::runtime::Handle,
}

impl ConsumeLoop {
    fn new(
        cfg: &Config,
        cut: Option<Epoch>,
        chunk_tx: tmpsc::Sender<Vec<Chunk>>,
        feedback_rx: mpsc::Receiver<Feedback>,
        stop: Arc<AtomicBool>,
        store: Arc<dyn ObjectStore>,
        handle: tokio::runtime::Handle,
    ) -> Result<Self, SpeedError> {
        let k = &cfg.kafka;
        let ctx = SpeedContext {
            redis: redis::Client::open(cfg.redis.url.as_str())?,
            keys: Keys::new(&cfg.redis.key_prefix),
            clock: cfg.epochs.clock(),
            seek_back: k.seek_back,
            cut: Mutex::new(cut),
            changes: Mutex::new(Vec::new()),
            changed: AtomicBool::new(false),
        };
        let mut client = ClientConfig::new();
        if let Some(id) = &k.instance_id {
            client.set("group.instance.id", id);
        }
        for (key, value) in k.consumer_settings(&k.group) {
            client.set(key, value);
        }
        let consumer: BaseConsumer<SpeedContext> = client
            .set("statistics.interval.ms", "5000")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .create_with_context(ctx)?;
        match k.assignment {
            config::Assignment::Group => {
                let topics: Vec<&str> = k.topics.iter().map(String::as_str).collect();
                consumer.subscribe(&topics)?;
            }
            config::Assignment::All => assign_all(&consumer, &k.topics)?,
        }
        Ok(ConsumeLoop {
            consumer,
            st: State {
                folder: Folder::new(cfg.views.clone(), cfg.epochs.clock()),
                limits: cfg.events.limits(),
                dead: DeadLetters::new(&k.brokers, &k.dead_letter_topic)?,
                parts: HashMap::new(),
                next_generation: 1,
            },
            chunk_tx,
            feedback_rx,
            stop,
            flush_every: cfg.speed.flush_interval.as_duration(),
            seek_back: k.seek_back,
            store,
            handle,
        })
    }

    fn run(&mut self) -> Result<(), SpeedError> {
        let mut next_flush = Instant::now() + self.flush_every;
        let mut next_commit = Instant::now() + COMMIT_EVERY;
        let mut next_cut = Instant::now() + CUT_REFRESH;
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            let now = Instant::now();
            if now >= next_flush || stopping {
                self.st.take_assignment_changes(self.consumer.context());
                self.handle_feedback()?;
                if !self.flush() {
                    break;
                }
                next_flush = Instant::now() + self.flush_every;
                if stopping {
                    break;
                }
            }
            if now >= next_commit {
                self.commit();
                next_commit = now + COMMIT_EVERY;
            }
            if now >= next_cut {
                self.refresh_cut();
                next_cut = now + CUT_REFRESH;
            }
            // `now` is fresh enough: one clock read per record is measurable
            // on the hot path (7% of the process in a profile).
            let wait = next_flush.saturating_duration_since(now);
            match self.consumer.poll(wait.min(Duration::from_millis(100))) {
                None => {}
                Some(Err(e)) => warn!(error = %e, "kafka poll error"),
                Some(Ok(msg)) => {
                    if self.consumer.context().changed.load(Ordering::Relaxed) {
                        self.st.take_assignment_changes(self.consumer.context());
                    }
                    self.st.on_record(&msg);
                }
            }
        }
        self.st.dead.flush(Duration::from_secs(10));
        Ok(())
    }

    fn handle_feedback(&mut self) -> Result<(), SpeedError> {
        while let Ok(fb) = self.feedback_rx.try_recv() {
            match fb {
                Feedback::Applied { tp, end } => {
                    if let Some(p) = self.st.parts.get_mut(&tp) {
                        p.applied_to = p.applied_to.max(end);
                    }
                }
                Feedback::Fenced {
                    tp,
                    generation,
                    stored,
                } => {
                    if self
                        .st
                        .parts
                        .get(&tp)
                        .is_some_and(|p| p.delta.generation == generation)
                    {
                        info!(topic = %tp.0, partition = tp.1, stored, "fenced: re-reading from the stored offset");
                        self.reseek(&tp, stored, false);
                    }
                }
                Feedback::Reset { tp, generation } => {
                    if self
                        .st
                        .parts
                        .get(&tp)
                        .is_some_and(|p| p.delta.generation == generation)
                    {
                        let cut = *self
                            .consumer
                            .context()
                            .cut
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        let target =
                            rebuild_offset(&self.consumer, &tp.0, tp.1, cut, self.folder_clock())?;
                        warn!(topic = %tp.0, partition = tp.1, target, "Redis has no offset for this partition: rebuilding from the cut");
                        self.reseek(&tp, target, true);
                    }
                }
            }
        }
        Ok(())
    }

    fn folder_clock(&self) -> EpochClock {
        self.consumer.context().clock
    }

    fn reseek(&mut self, tp: &Tp, target: i64, fresh: bool) {
        let generation = self.st.bump();
        let low = self
            .consumer
            .fetch_watermarks(&tp.0, tp.1, Duration::from_secs(10))
            .map(|(l, _)| l)
            .unwrap_or(0);
        let pos = seek_position(low, target, self.seek_back);
        if let Err(e) =
            self.consumer
                .seek(&tp.0, tp.1, Offset::Offset(pos), Duration::from_secs(10))
        {
            warn!(error = %e, topic = %tp.0, partition = tp.1, "seek failed; the next chunk will be fenced and retried");
        }
        if let Some(p) = self.st.parts.get_mut(tp) {
            p.delta = PartitionDelta::new(target, fresh, generation);
            p.awaiting_first = true;
        }
    }

    /// Cut every partition's delta and queue the chunks. Blocks while the
    /// queue is full (backpressure). Returns false if the flusher is gone.
    fn flush(&mut self) -> bool {
        let chunks: Vec<Chunk> = self
            .st
            .parts
            .iter_mut()
            .filter(|(_, p)| !p.delta.is_empty())
            .map(|((t, p), part)| part.delta.cut(t, *p))
            .collect();
        if chunks.is_empty() {
            return true;
        }
        self.chunk_tx.blocking_send(chunks).is_ok()
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
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                if !matches!(e, KafkaError::ConsumerCommit(_)) {
                    debug!(error = %e, "advisory commit failed");
                }
            }
        }
    }

    fn refresh_cut(&mut self) {
        let views: Vec<_> = self.st.folder.views().cloned().collect();
        match self.handle.block_on(current_cut(&self.store, &views)) {
            Ok(cut) => {
                *self
                    .consumer
                    .context()
                    .cut
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = cut
            }
            Err(e) => warn!(error = %e, "cannot read the cut"),
        }
    }
}
