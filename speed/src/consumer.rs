//! The consume loop: records in, fenced chunks out.
//!
//! A dedicated thread polls an rdkafka `BaseConsumer`, decodes each record and
//! folds it into one delta shared by all its partitions. Every flush interval,
//! if the flusher has caught up, it cuts the delta into a chunk (the
//! aggregates plus each partition's offset range) and hands it over a bounded
//! queue. While Redis is still busy with the previous chunk the thread keeps
//! folding instead, so that under load each call carries more events per key
//! written: Redis's cost follows the number of keys, not of events. Past a
//! size limit it cuts anyway; when the queue is full the thread blocks,
//! polling stops, and Kafka is the buffer: memory stays flat whatever the lag.
//!
//! The flusher (a tokio task) applies chunks through the fencing script and
//! sends back what happened. A chunk that fails (someone else moved a
//! partition's offset: a replay or a zombie; or Redis lost its memory) applied
//! nothing, and the records of all partitions are mixed in the current delta:
//! so the loop drops that delta and re-reads every partition, the failed ones
//! from what Redis stores (or from the batch cut when Redis stores nothing),
//! the others from their last cut. Feedback carries a generation so that
//! answers about chunks cut before such a re-seek are ignored; any mismatch
//! left shows up as the next chunk failing, which re-seeks again.
//!
//! Invariant per partition: records are folded in strictly increasing offset
//! order, each at most once per generation (anything below the partition's
//! end is dropped), so every applied chunk is exactly the records of its ranges.

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
use tracing::{debug, error, info, warn};

use tally_core::config::{self, Config};
use tally_core::event::decode;
use tally_core::keys::Keys;
use tally_core::time::{Epoch, EpochClock};

use crate::apply::{is_transient, Applier, Outcome};
use crate::dead_letter::{DeadLetters, Source};
use crate::delta::{Chunk, Delta, Folder, Range};
use crate::error::SpeedError;
use crate::fetch_queue::{FetchQueue, Router};
use crate::resume::{current_cut, rebuild_offset, seek_position};

const CUT_REFRESH: Duration = Duration::from_secs(30);
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

/// Run the speed layer until `shutdown` is cancelled: flush, then return.
pub async fn run(
    cfg: Arc<Config>,
    store: Arc<dyn ObjectStore>,
    shutdown: CancellationToken,
) -> Result<(), SpeedError> {
    info!(topics = ?cfg.kafka.topics, group = %cfg.kafka.group, "speed layer starting");
    let mut applier = Applier::connect(&cfg).await?;
    let cut = current_cut(&store, &cfg.views).await?;
    let (chunk_tx, mut chunk_rx) = tmpsc::channel::<Chunk>(cfg.speed.queue_capacity);
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
    let mut failed = None;
    'chunks: while let Some(chunk) = chunk_rx.recv().await {
        let started = Instant::now();
        loop {
            match applier.apply(&chunk, &folder, now_ms()).await {
                Ok(outcome) => {
                    metrics::histogram!("tally_speed_flush_seconds")
                        .record(started.elapsed().as_secs_f64());
                    report(&feedback_tx, chunk, outcome);
                    backoff = Duration::from_millis(50);
                    break;
                }
                Err(e) if !is_transient(&e) => {
                    // The same chunk would fail the same way forever: stop and
                    // say why. Nothing of it was applied (the script checks
                    // before it writes), so a restart resumes exactly.
                    error!(error = %e, "applying to Redis failed and would fail again; stopping");
                    metrics::counter!("tally_speed_flush_errors_total", "kind" => "permanent")
                        .increment(1);
                    failed = Some(e);
                    break 'chunks;
                }
                Err(e) => {
                    // Nothing was applied: retrying is safe, fencing sorts out the rest.
                    warn!(error = %e, "applying to Redis failed; retrying");
                    metrics::counter!("tally_speed_flush_errors_total", "kind" => "transient")
                        .increment(1);
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
    if failed.is_some() {
        // Stop the consume thread; it may be blocked on the full queue.
        stop.store(true, Ordering::SeqCst);
        drop(chunk_rx);
    }
    let result = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| SpeedError::Thread(e.to_string()))?
        .map_err(|_| SpeedError::Thread("consume thread panicked".into()))?;
    info!("speed layer stopped");
    match failed {
        Some(e) => Err(e),
        None => result,
    }
}

fn report(tx: &mpsc::Sender<Feedback>, c: Chunk, o: Outcome) {
    let fb = match o {
        Outcome::Applied => {
            metrics::counter!("tally_speed_events_total").increment(c.events);
            Feedback::Applied { ranges: c.ranges }
        }
        Outcome::Failed { stored } => {
            metrics::counter!("tally_speed_fenced_chunks_total").increment(1);
            if c.ranges
                .iter()
                .zip(&stored)
                .any(|(r, s)| s.is_none() && !r.fresh)
            {
                metrics::counter!("tally_speed_resets_total").increment(1);
            }
            debug!(ranges = ?c.ranges, ?stored, "chunk fenced");
            Feedback::Failed {
                generation: c.generation,
                ranges: c.ranges.into_iter().zip(stored).collect(),
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
        ranges: Vec<Range>,
    },
    /// Nothing applied; each range with what Redis stores for its partition.
    Failed {
        generation: u64,
        ranges: Vec<(Range, Option<i64>)>,
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
    /// Sends assigned partitions' records to the loop's [`FetchQueue`].
    router: Router,
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
                    // Before the assignment starts fetching: see fetch_queue.
                    if !self.router.route(consumer, topic, *p) {
                        debug!(%topic, partition = p, "records of this partition arrive through the consumer queue");
                    }
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
    /// First offset not yet in a cut chunk.
    start: i64,
    /// One past the last offset folded (or rejected).
    end: i64,
    /// Whether `start` is a rebuild point (no stored offset in Redis).
    fresh: bool,
    /// Set after a seek until the first record arrives (to detect broker skips).
    awaiting_first: bool,
    committed_to: i64,
    applied_to: i64,
}

impl Part {
    fn new(target: i64, fresh: bool) -> Self {
        Part {
            start: target,
            end: target,
            fresh,
            awaiting_first: true,
            committed_to: target,
            applied_to: target,
        }
    }
}

/// What the hot path mutates, apart from the consumer it polls.
struct State {
    folder: Folder,
    limits: tally_core::event::Limits,
    dead: DeadLetters,
    parts: HashMap<Tp, Part>,
    delta: Delta,
    generation: u64,
}

/// One record, from either queue (see [`crate::fetch_queue`]).
struct Rec<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<&'a [u8]>,
    payload: &'a [u8],
}

impl<'a> Rec<'a> {
    fn of_message(msg: &'a rdkafka::message::BorrowedMessage<'_>) -> Self {
        Rec {
            topic: msg.topic(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key(),
            payload: msg.payload().unwrap_or(&[]),
        }
    }
}

impl State {
    fn on_record(&mut self, msg: &Rec<'_>) {
        let (topic, partition, offset) = (msg.topic, msg.partition, msg.offset);
        // Avoid allocating the key for the lookup on the hot path.
        let Some(part) = self
            .parts
            .iter_mut()
            .find(|((t, p), _)| *p == partition && t == topic)
            .map(|(_, part)| part)
        else {
            return; // not (or no longer) ours
        };
        if offset < part.end {
            return; // below the target of a seek, or already folded
        }
        if part.awaiting_first {
            part.awaiting_first = false;
            if offset > part.end {
                warn!(topic, partition, expected = part.end, got = offset,
                    "first record after a seek is past the target: the broker skipped records (raise kafka.seek_back) or the log has a gap");
            }
        }
        part.end = offset + 1;
        let kafka_ts = msg.timestamp_ms.unwrap_or_else(now_ms);
        let payload = msg.payload;
        match decode(payload, kafka_ts, &self.limits) {
            Ok(event) => self.folder.fold(&mut self.delta, topic, kafka_ts, &event),
            Err(reject) => self.dead.send(
                msg.key,
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

    /// Apply assignment changes recorded by the rebalance callback. Records
    /// of a revoked partition are flushed first: they share the delta with
    /// the others (the next owner's fencing sorts out who wins). Returns false
    /// if the flusher is gone.
    fn take_assignment_changes(&mut self, ctx: &SpeedContext, tx: &tmpsc::Sender<Chunk>) -> bool {
        if !ctx.changed.swap(false, Ordering::SeqCst) {
            return true;
        }
        let changes: Vec<Assignment> =
            std::mem::take(&mut *ctx.changes.lock().unwrap_or_else(|e| e.into_inner()));
        for c in changes {
            match c {
                Assignment::Assigned { tp, target, fresh } => {
                    self.parts.insert(tp, Part::new(target, fresh));
                }
                Assignment::Revoked { tp } => {
                    if self.parts.get(&tp).is_some_and(|p| p.end > p.start) && !self.flush(tx) {
                        return false;
                    }
                    self.parts.remove(&tp);
                }
            }
        }
        true
    }

    /// Cut the delta and queue the chunk. Blocks while the queue is full
    /// (backpressure). Returns false if the flusher is gone.
    fn flush(&mut self, tx: &tmpsc::Sender<Chunk>) -> bool {
        match self.cut() {
            None => true,
            Some(chunk) => tx.blocking_send(chunk).is_ok(),
        }
    }

    /// Start a new generation: answers about chunks cut before are stale.
    fn bump(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// Cut the delta into a chunk, or `None` if no partition moved.
    fn cut(&mut self) -> Option<Chunk> {
        let ranges: Vec<Range> = self
            .parts
            .iter_mut()
            .filter(|(_, p)| p.end > p.start)
            .map(|((topic, partition), p)| {
                let r = Range {
                    topic: topic.clone(),
                    partition: *partition,
                    start: p.start,
                    end: p.end,
                    fresh: p.fresh,
                };
                p.start = p.end;
                p.fresh = false;
                r
            })
            .collect();
        if ranges.is_empty() {
            return None;
        }
        let (slices, events) = self.delta.take();
        Some(Chunk {
            generation: self.generation,
            ranges,
            slices,
            events,
        })
    }
}

/// Handle one poll result. Returns false if the flusher is gone.
fn on_polled(
    st: &mut State,
    ctx: &SpeedContext,
    tx: &tmpsc::Sender<Chunk>,
    polled: rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>,
) -> bool {
    match polled {
        Err(e) => warn!(error = %e, "kafka poll error"),
        Ok(msg) => {
            if ctx.changed.load(Ordering::Relaxed) && !st.take_assignment_changes(ctx, tx) {
                return false;
            }
            st.on_record(&Rec::of_message(&msg));
        }
    }
    true
}

/// Fold a batch from the fetch queue. Returns how many records it held.
fn on_batch(st: &mut State, fetch: &mut FetchQueue, timeout: Duration) -> usize {
    let batch = fetch.poll(timeout);
    // Records of one partition come in runs: resolve the topic name once per run.
    let mut topic: (*const rdkafka::bindings::rd_kafka_topic_t, &str) = (std::ptr::null(), "");
    for r in batch.records() {
        if let Some(e) = r.error() {
            warn!(error = %e, topic = r.topic(), partition = r.partition(), "kafka fetch error");
            continue;
        }
        if r.topic_handle() != topic.0 {
            topic = (r.topic_handle(), r.topic());
        }
        st.on_record(&Rec {
            topic: topic.1,
            partition: r.partition(),
            offset: r.offset(),
            timestamp_ms: r.timestamp_ms(),
            key: r.key(),
            payload: r.payload(),
        });
    }
    batch.len()
}

struct ConsumeLoop {
    /// Declared before `consumer`: dropped first, as librdkafka requires.
    fetch: FetchQueue,
    consumer: BaseConsumer<SpeedContext>,
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
    fn new(
        cfg: &Config,
        cut: Option<Epoch>,
        chunk_tx: tmpsc::Sender<Chunk>,
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
            router: Router::default(),
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
        let fetch = FetchQueue::new(&consumer, POLL_BATCH)
            .ok_or_else(|| SpeedError::Thread("librdkafka could not create a queue".into()))?;
        consumer.context().router.point_at(&fetch);
        match k.assignment {
            config::Assignment::Group => {
                let topics: Vec<&str> = k.topics.iter().map(String::as_str).collect();
                consumer.subscribe(&topics)?;
            }
            config::Assignment::All => assign_all(&consumer, &k.topics)?,
        }
        Ok(ConsumeLoop {
            fetch,
            consumer,
            st: State {
                folder: Folder::new(cfg.views.clone(), cfg.epochs.clock()),
                limits: cfg.events.limits(),
                dead: DeadLetters::new(&k.brokers, &k.dead_letter_topic)?,
                parts: HashMap::new(),
                delta: Delta::default(),
                generation: 1,
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
                let full = self.st.delta.cells >= MAX_CELLS || self.st.delta.events >= MAX_EVENTS;
                if caught_up || full || stopping {
                    if !self.flush() {
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
                self.refresh_cut();
                next_cut = now + CUT_REFRESH;
            }
            // The consumer queue first: rebalances (which route partitions
            // to the fetch queue and queue their changes), errors, commit
            // results, and records fetched before their partition was routed.
            while let Some(r) = self.consumer.poll(Duration::ZERO) {
                if !on_polled(&mut self.st, self.consumer.context(), &self.chunk_tx, r) {
                    break 'consume;
                }
            }
            if !self.take_assignment_changes() {
                break;
            }
            // Then records, a batch at a time without waiting: no clock read
            // per record. Wait only when idle, briefly, so that rebalances on
            // the consumer queue are not kept waiting.
            if on_batch(&mut self.st, &mut self.fetch, Duration::ZERO) == 0 {
                let wait = next_flush.saturating_duration_since(now);
                on_batch(&mut self.st, &mut self.fetch, wait.min(IDLE_WAIT));
            }
        }
        self.st.dead.flush(Duration::from_secs(10));
        Ok(())
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

    /// After a failed chunk: drop the delta and re-read every partition, the
    /// failed chunk's from what Redis stores, the others from their last cut.
    fn resync(&mut self, failed: Vec<(Range, Option<i64>)>) -> Result<(), SpeedError> {
        self.st.bump();
        self.st.delta.clear();
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
                    let cut = *self
                        .consumer
                        .context()
                        .cut
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    let t = rebuild_offset(&self.consumer, &tp.0, tp.1, cut, self.folder_clock())?;
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

    fn folder_clock(&self) -> EpochClock {
        self.consumer.context().clock
    }

    fn reseek(&mut self, tp: &Tp, target: i64, fresh: bool) {
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
            let (committed_to, applied_to) = (p.committed_to, p.applied_to);
            *p = Part::new(target, fresh);
            p.committed_to = committed_to;
            p.applied_to = applied_to;
        }
    }

    fn flush(&mut self) -> bool {
        self.st.flush(&self.chunk_tx)
    }

    fn take_assignment_changes(&mut self) -> bool {
        self.st
            .take_assignment_changes(self.consumer.context(), &self.chunk_tx)
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

impl Drop for ConsumeLoop {
    fn drop(&mut self) {
        // The fetch queue goes first (field order); a rebalance served while
        // the consumer closes must not route to it.
        self.consumer.context().router.clear();
    }
}
