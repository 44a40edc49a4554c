//! Reading: each record into its partition's open roll, from the claimed
//! position and never past a gap (the shared [`ReadPosition`] decides), and
//! the seeks that put a partition there.

use std::collections::btree_map::Entry;

use super::*;

impl Archiver {
    pub(super) async fn on_message(
        &mut self,
        msg: KafkaResult<BorrowedMessage<'_>>,
    ) -> Result<(), ArchiveError> {
        let msg = match msg {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                self.on_end(p);
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "archiver consume error");
                return Ok(());
            }
        };
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        // Few partitions per process: a scan, no key allocated per record.
        let Some((tp, part)) = self
            .parts
            .iter_mut()
            .find(|((t, p), _)| *p == partition && t == topic)
        else {
            return Ok(()); // not (or no longer) ours
        };
        match part.read.admit(topic, partition, offset) {
            Admit::Take => {}
            // The seek-back's replay of what is archived or buffered.
            Admit::Drop => return Ok(()),
            Admit::SeekBack => {
                let tp = tp.clone();
                tally_kafka::fault::reseeking(self.consumer.as_ref());
                self.seek_pending(&tp).await;
                return Ok(());
            }
            Admit::Gap(gap) => {
                metrics::counter!("tally_archive_missing_offsets_total",
                    "topic" => topic.to_owned(), "partition" => partition.to_string())
                .increment((gap.to - gap.from) as u64);
            }
        }
        let ts = kafka_time(msg.timestamp().to_millis());
        let epoch = self.grid.epoch_of(ts);
        let held_to = match part.covered.entry(epoch) {
            Entry::Occupied(known) => *known.get(),
            Entry::Vacant(slot) => {
                let store = self.store.clone();
                let holder = archive_file::file_holding(store, epoch, topic, partition, offset);
                *slot.insert(holder.await?)
            }
        };
        if held_to.is_some_and(|last| offset <= last) {
            // Durable in a file a previous run wrote (see `covered`): with
            // nothing buffered, the durable position moves past it.
            if part.idle() {
                part.archived_to = part.read.next();
            }
            return Ok(());
        }
        let rows = part
            .open
            .entry(epoch)
            .or_insert_with(|| ArchiveRows::new(offset));
        let value = msg.payload().unwrap_or(&[]);
        rows.push(topic, partition, offset, ts, self.grid, &self.limits, value);
        part.bytes += value.len().max(1);
        part.opened_at.get_or_insert_with(Instant::now);
        self.summary.records += 1;
        if part.bytes >= self.roll_bytes {
            let tp = tp.clone();
            self.roll(&tp).await?;
        }
        Ok(())
    }

    /// The fetch of some topic's partition `p` reached the end of its log
    /// (librdkafka does not say which topic): each owned partition `p` is
    /// checked against the end its last fetch reported.
    pub(super) fn on_end(&mut self, p: i32) {
        let mut stop = Vec::new();
        for ((topic, partition), part) in self.parts.iter_mut() {
            if *partition != p {
                continue;
            }
            let Some(end) = fetched_end(self.consumer.as_ref(), topic, p) else {
                continue;
            };
            // Not an end cached before the claim (Tansu's reported high can
            // be a batch short, never more than the end).
            if end < part.high_at_claim {
                continue;
            }
            if let Err(e) = part.read.at_end(end) {
                stop.push(((topic.clone(), p), e));
            }
        }
        for ((topic, p), e) in stop {
            let progress = paths::archive_progress(&topic, p);
            tracing::error!(%topic, partition = p, "{e}. To archive the new log, move this partition's files of the old one out of {}/ (the batch de-duplicates on topic, partition and offset), delete `{progress}`, and restart the archiver", paths::EVENTS_ROOT);
            metrics::gauge!("tally_archive_partition_stopped",
                "topic" => topic.clone(), "partition" => p.to_string())
            .set(1.0);
            self.summary.stopped += 1;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, p);
            if let Err(e) = self.consumer.pause(&tpl) {
                tracing::debug!(error = %e, "pausing a stopped partition failed");
            }
        }
    }

    /// Do the partition's pending seek; should it fail, the next tick
    /// tries again, and nothing is taken meanwhile.
    pub(super) async fn seek_pending(&mut self, tp: &Tp) {
        let Some(from) = self.parts.get(tp).and_then(|p| p.read.pending_seek()) else {
            return;
        };
        if seek(&self.consumer, &tp.0, tp.1, from).await {
            if let Some(part) = self.parts.get_mut(tp) {
                part.read.seek_done();
            }
        }
    }
}

pub(super) async fn watermarks(
    consumer: &Arc<ArchiveConsumer>,
    topic: &str,
    p: i32,
) -> Result<Watermarks, ArchiveError> {
    let c = consumer.clone();
    let t = topic.to_owned();
    Ok(tokio::task::spawn_blocking(move || tally_kafka::watermarks(c.as_ref(), &t, p)).await??)
}

/// Seek a partition; whether it worked. librdkafka refuses a seek until it
/// has started the partition's fetcher, so retry for a while.
pub(super) async fn seek(
    consumer: &Arc<ArchiveConsumer>,
    topic: &str,
    p: i32,
    offset: i64,
) -> bool {
    for attempt in 0..SEEK_ATTEMPTS {
        let c = consumer.clone();
        let t = topic.to_owned();
        let r = tokio::task::spawn_blocking(move || {
            c.seek(&t, p, Offset::Offset(offset), KAFKA_TIMEOUT)
        })
        .await;
        if let Ok(Err(_)) = r {
            tally_kafka::fault::seek_failed(consumer.as_ref(), topic, p);
        }
        match r {
            Ok(Ok(())) => return true,
            Ok(Err(e)) if attempt + 1 < SEEK_ATTEMPTS => {
                tracing::debug!(error = %e, topic, partition = p, "seek not possible yet");
                tokio::time::sleep(SEEK_RETRY).await;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, topic, partition = p, offset, "cannot seek");
            }
            Err(e) => {
                tracing::warn!(error = %e, "seek task failed");
                return false;
            }
        }
    }
    false
}
