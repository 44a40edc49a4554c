//! The speed layer at run time: records in, fenced chunks out.
//!
//! A dedicated thread (`consume.rs`) reads the assigned partitions a batch at
//! a time, decodes each record and folds it into one delta shared by all its
//! partitions (`state.rs`). Every flush interval, if the flusher has caught up,
//! it cuts the delta into a chunk (the aggregates plus each partition's offset
//! range) and hands it over a bounded queue. While Redis is still busy with
//! the previous chunk the thread keeps folding instead, so that under load
//! each call carries more events per key written: Redis's cost follows the
//! number of keys, not of events. Past a size limit it cuts anyway; when the
//! queue is full the thread blocks, reading stops, and Kafka is the buffer:
//! memory stays flat whatever the lag.
//!
//! The flusher (`flusher.rs`, a tokio task) applies chunks through the fencing
//! script and sends back what happened. A chunk that fails (someone else
//! moved a partition's offset: a replay or a zombie; or Redis lost its
//! memory) applied nothing, and the records of all partitions are mixed in
//! the current delta: so the thread drops that delta and re-reads every
//! partition, the failed ones from what Redis stores (or from the snapshot
//! cut when Redis stores nothing), the others from their last chunk. Feedback
//! carries a generation so that answers about chunks cut before such a
//! re-seek are ignored; any mismatch left shows up as the next chunk failing,
//! which re-seeks again.
//!
//! Where a newly assigned partition starts (the offset Redis stores, or the
//! rebuild point) is decided in the rebalance callback (`starts.rs`).
//!
//! Invariant per partition: records are folded in strictly increasing offset
//! order, each at most once per generation (anything below the partition's
//! read position is dropped), so every applied chunk is exactly the records
//! of its ranges.

mod consume;
mod flusher;
mod starts;
mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use object_store::ObjectStore;
use tokio::sync::mpsc as tmpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use tally_core::agg::AggKind;
use tally_core::config::Config;

use crate::apply::Applier;
use crate::delta::{Chunk, Folder, Range};
use crate::error::SpeedError;
use crate::resume::snapshot_cut;

/// What one run of the speed layer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpeedSummary {
    /// Valid events in the chunks applied to Redis.
    pub events: u64,
    /// Chunks applied.
    pub chunks: u64,
    /// Chunks fenced off (nothing applied; their records were read again).
    pub fenced: u64,
    /// Partitions stopped because their log ends below the offset Redis
    /// stores for them (the topic was created again, the broker lost its
    /// records).
    pub stopped: u64,
}

/// What the flusher tells the consume thread.
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

/// Run the speed layer until `shutdown` is cancelled: flush, then return.
pub async fn run(
    cfg: Arc<Config>,
    store: Arc<dyn ObjectStore>,
    shutdown: CancellationToken,
) -> Result<SpeedSummary, SpeedError> {
    info!(topics = ?cfg.kafka.topics, group = %cfg.kafka.group, "speed layer starting");
    let mut con = crate::RedisCon::connect(&cfg.redis, std::time::Duration::from_secs(10)).await?;
    crate::eviction::check(&cfg.redis, &mut con).await?;
    if cfg
        .views
        .iter()
        .any(|v| v.measures.iter().any(|m| m.agg == AggKind::Quantiles))
    {
        crate::hash_encoding::advise(&mut con).await;
    }
    let applier = Applier::connect(&cfg).await?;
    crate::definitions::reconcile(&mut applier.connection(), applier.layout(), &cfg.views).await?;
    let cut = snapshot_cut(&store, &cfg.views).await?;
    let (keepalive_store, applier_con) = (store.clone(), applier.connection());
    let (chunk_tx, chunk_rx) = tmpsc::channel::<Chunk>(cfg.speed.queue_capacity);
    let (feedback_tx, feedback_rx) = mpsc::channel::<Feedback>();
    let stop = Arc::new(AtomicBool::new(false));

    let thread = {
        let cfg = cfg.clone();
        let stop = stop.clone();
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("tally-speed-consume".into())
            .spawn(move || {
                let mut looper = consume::ConsumeLoop::new(
                    &cfg,
                    cut,
                    chunk_tx,
                    feedback_rx,
                    stop,
                    store,
                    handle,
                )?;
                looper.run()
            })
            .map_err(|e| SpeedError::Thread(e.to_string()))?
    };

    let keepalive = tokio::spawn(crate::keepalive::run(
        cfg.clone(),
        keepalive_store,
        applier_con,
        shutdown.child_token(),
    ));

    // Stop the consume thread when asked; it flushes and closes the queue.
    let stopper = {
        let stop = stop.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stop.store(true, Ordering::SeqCst);
        })
    };

    let folder = Folder::new(cfg.views.clone(), cfg.epochs.grid());
    let flushed = flusher::run(applier, &folder, chunk_rx, &feedback_tx, &shutdown).await;
    stopper.abort();
    keepalive.abort();
    if flushed.is_err() {
        // The queue is closed (a blocked send returns); stop the thread too.
        stop.store(true, Ordering::SeqCst);
    }
    let consumed = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| SpeedError::Thread(e.to_string()))?
        .map_err(|_| SpeedError::Thread("consume thread panicked".into()))?;
    info!("speed layer stopped");
    let summary = flushed?;
    Ok(SpeedSummary {
        stopped: consumed?,
        ..summary
    })
}
