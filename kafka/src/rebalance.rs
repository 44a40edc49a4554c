//! The consumer context: where newly assigned partitions start, and what
//! changed for the layer's loop.
//!
//! librdkafka runs the rebalance callback inside a poll, on the polling
//! thread. On an assignment the callback asks the [`Layer`] where each
//! partition starts, forwards the partition to the consumer's fetch queue if
//! it has one (this must come before the assignment: see [`crate::reader`]),
//! assigns, and records an [`Change::Assigned`] with the layer's start
//! information. On a revocation, or a rebalance error (after which librdkafka
//! has dropped the whole assignment), it unassigns and records that. It never
//! touches the loop's state: the loop takes the recorded changes
//! ([`Recorder::take`]) before it handles another record, so that a revoked
//! partition is never written again by this process.
//!
//! With `kafka.assignment = "all"` a process takes every partition itself,
//! through the same code ([`assign`]): both modes start a partition the
//! same way.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::fetch_queue::Router;
use crate::Tp;

/// What a layer decides when its consumer is given a partition.
pub trait Layer: Send + Sync + Sized + 'static {
    /// What the layer's loop needs to know about a newly assigned partition
    /// (recorded with [`Change::Assigned`]).
    type Start: Send + fmt::Debug + 'static;

    /// Whether newly assigned partitions stay paused until the loop resumes
    /// them (the archiver first claims a partition in the store).
    const PAUSE_ASSIGNED: bool = false;

    /// Where `topic`/`partition` starts, and what to record about it. Runs
    /// inside the rebalance callback: it may ask the broker or Redis, but
    /// must not wait for the layer's loop.
    fn start(
        &self,
        consumer: &impl Consumer<Context<Self>>,
        topic: &str,
        partition: i32,
    ) -> (Offset, Self::Start);

    /// librdkafka's statistics (every `statistics.interval.ms`, when set).
    fn stats(&self, _stats: Statistics) {}
}

/// A change of assignment, as the rebalance callback saw it.
#[derive(Debug)]
pub enum Change<S> {
    /// Assigned, starting where [`Layer::start`] said.
    Assigned(Tp, S),
    Revoked(Tp),
    /// A rebalance error: librdkafka dropped the whole assignment.
    RevokedAll,
}

/// The changes recorded by the callback and not yet taken by the loop.
pub struct Recorder<S> {
    changes: Mutex<Vec<Change<S>>>,
    pending: AtomicBool,
    recorded: Notify,
}

impl<S> fmt::Debug for Recorder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl<S> Recorder<S> {
    fn new() -> Self {
        Recorder {
            changes: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            recorded: Notify::new(),
        }
    }

    fn push(&self, changes: impl IntoIterator<Item = Change<S>>) {
        self.changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(changes);
        self.pending.store(true, Ordering::SeqCst);
        self.recorded.notify_one();
    }

    /// Whether changes wait to be taken: one atomic load, for hot loops.
    #[inline]
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// The changes recorded since the last take, oldest first.
    pub fn take(&self) -> Vec<Change<S>> {
        if !self.pending.swap(false, Ordering::SeqCst) {
            return Vec::new();
        }
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves when changes are recorded (at once if some were recorded
    /// since the last call resolved), for async loops.
    pub async fn recorded(&self) {
        self.recorded.notified().await
    }
}

/// The rdkafka context of a Tally consumer: `L` decides where partitions
/// start; the changes wait in a [`Recorder`] for the layer's loop.
pub struct Context<L: Layer> {
    layer: L,
    changes: Recorder<L::Start>,
    /// Where assigned partitions' records go when the consumer reads them
    /// through a fetch queue ([`crate::Reader`]); nowhere otherwise.
    pub(crate) router: Router,
}

impl<L: Layer> fmt::Debug for Context<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("changes", &self.changes)
            .finish_non_exhaustive()
    }
}

impl<L: Layer> Context<L> {
    pub fn new(layer: L) -> Self {
        Context {
            layer,
            changes: Recorder::new(),
            router: Router::default(),
        }
    }

    pub fn layer(&self) -> &L {
        &self.layer
    }

    /// The assignment changes waiting for the loop.
    pub fn changes(&self) -> &Recorder<L::Start> {
        &self.changes
    }

    /// Start, route, assign and record the partitions of `tpl`.
    fn assigned(&self, consumer: &impl Consumer<Self>, tpl: &mut TopicPartitionList) {
        let tps: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|el| (el.topic().to_owned(), el.partition()))
            .collect();
        let mut changes = Vec::with_capacity(tps.len());
        for (topic, partition) in tps {
            let (offset, start) = self.layer.start(consumer, &topic, partition);
            if let Err(e) = tpl.set_partition_offset(&topic, partition, offset) {
                warn!(error = %e, %topic, partition, "cannot set the start offset");
            }
            // Before the assignment starts fetching: see `crate::reader`.
            if !self.router.route(consumer, &topic, partition) {
                debug!(%topic, partition, "records of this partition arrive through the consumer queue");
            }
            info!(%topic, partition, ?offset, ?start, "partition assigned");
            changes.push(Change::Assigned((topic, partition), start));
        }
        if let Err(e) = consumer.assign(tpl) {
            warn!(error = %e, "assign failed");
        }
        if L::PAUSE_ASSIGNED {
            if let Err(e) = consumer.pause(tpl) {
                warn!(error = %e, "pausing newly assigned partitions failed");
            }
        }
        self.changes.push(changes);
    }
}

impl<L: Layer> ClientContext for Context<L> {
    fn stats(&self, stats: Statistics) {
        self.layer.stats(stats);
    }

    /// librdkafka reports reaching the end of a partition as a global error
    /// (`enable.partition.eof`, which the loops need to see where a log
    /// ends). That is news, not an error: logged at debug, so that an idle
    /// topic does not fill the log with errors. Everything else stays an
    /// error, as rdkafka's default logs it.
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            debug!(%error, reason, "librdkafka: end of partition");
        } else {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl<L: Layer> ConsumerContext for Context<L> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assigned(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.changes.push(
                    tpl.elements()
                        .iter()
                        .map(|el| Change::Revoked((el.topic().to_owned(), el.partition()))),
                );
                if let Err(e) = consumer.unassign() {
                    warn!(error = %e, "unassign failed");
                }
            }
            other => {
                warn!(error = ?other, "rebalance error: the assignment is dropped");
                self.changes.push([Change::RevokedAll]);
                let _ = consumer.unassign();
            }
        }
    }
}

/// Take `partitions` without a group ([`crate::chosen_partitions`]),
/// starting each where a group assignment would: the callback's code.
pub fn assign<L: Layer>(consumer: &impl Consumer<Context<L>>, partitions: &[Tp]) {
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in partitions {
        tpl.add_partition(topic, *p);
    }
    consumer.context().assigned(consumer, &mut tpl);
}
