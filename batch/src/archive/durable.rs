//! Making rows durable: rolls into archive files (encoded and written by a
//! task of their own while the loop reads on), then the fenced progress
//! write, the observations that complete epochs, and the cut.

use super::*;

impl Archiver {
    pub(super) async fn on_tick(&mut self) -> Result<(), ArchiveError> {
        let owned: Vec<Tp> = self.parts.keys().cloned().collect();
        for tp in owned {
            self.seek_pending(&tp).await;
            let due = self
                .parts
                .get(&tp)
                .and_then(|p| p.opened_at)
                .is_some_and(|t| t.elapsed() >= self.roll_interval);
            if due {
                self.roll(&tp).await?;
            }
            self.observe(&tp).await?;
        }
        Ok(())
    }

    /// Hand every open file of the partition to a roll task, which encodes
    /// and writes them while the loop reads on; its progress advances when
    /// the task is done ([`Archiver::on_rolled`]). One roll per partition is
    /// in flight: a partition due again first waits for its last one, which
    /// keeps its files and progress in order and its memory at two rolls.
    pub(super) async fn roll(&mut self, tp: &Tp) -> Result<(), ArchiveError> {
        self.settle_roll(tp).await?;
        let Some(part) = self.parts.get_mut(tp) else {
            return Ok(());
        };
        if part.open.is_empty() {
            return Ok(());
        }
        // Narrow the zombie window: a member that lost the partition without
        // hearing of it must not overwrite the new owner's files.
        if !part.claim.still_ours(self.store.as_ref()).await? {
            self.lose(tp);
            return Ok(());
        }
        // A file a durable one already holds (a replay) is known here, on
        // the loop, so that what is read next of its epoch is skipped (see
        // `covered`) rather than buffered into a second file while the
        // others are written.
        let mut files = Vec::with_capacity(part.open.len());
        for (epoch, rows) in std::mem::take(&mut part.open) {
            let path = paths::archive_file(epoch, &tp.0, tp.1, rows.first_offset);
            match archive_file::covering(self.store.clone(), &path, &rows).await? {
                Some(last) => {
                    part.covered.insert(epoch, Some(last));
                }
                None => files.push((path, rows)),
            }
        }
        // Bounded: an epoch this far behind the newest is looked up again if
        // a record of it still comes (a late producer timestamp).
        if let Some(&newest) = part.covered.keys().next_back() {
            part.covered
                .retain(|&e, _| e + COVERED_EPOCHS_KEPT >= newest);
        }
        self.next_roll += 1;
        let id = self.next_roll;
        let (store, promote) = (self.store.clone(), self.promote.clone());
        let task = self.rolls.spawn(async move {
            let mut rows_written = Vec::with_capacity(files.len());
            for (path, mut rows) in files {
                let wrote = archive_file::write(store.clone(), &path, &mut rows, &promote).await;
                if let Err(e) = wrote {
                    return Rolled {
                        id,
                        rows_written: Err(e),
                    };
                }
                rows_written.push(rows.len());
            }
            Rolled {
                id,
                rows_written: Ok(rows_written),
            }
        });
        part.rolling = Some(Rolling {
            id,
            archived_to: part.read.next(),
            task,
        });
        part.opened_at = None;
        part.bytes = 0;
        Ok(())
    }

    /// Wait until the partition has no roll in flight (others that end
    /// meanwhile are taken too).
    pub(super) async fn settle_roll(&mut self, tp: &Tp) -> Result<(), ArchiveError> {
        while self.parts.get(tp).is_some_and(|p| p.rolling.is_some()) {
            match self.rolls.join_next().await {
                Some(joined) => self.on_rolled(joined).await?,
                None => break, // nothing in flight after all
            }
        }
        Ok(())
    }

    /// A roll task ended: its files are durable, so the partition's progress
    /// advances to where the roll was cut. A roll of a partition since
    /// dropped (or claimed again) advances nothing.
    pub(super) async fn on_rolled(
        &mut self,
        joined: Result<Rolled, tokio::task::JoinError>,
    ) -> Result<(), ArchiveError> {
        let rolled = match joined {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let found = self.parts.iter_mut().find_map(|(tp, part)| {
            let rolling = part.rolling.take_if(|r| r.id == rolled.id)?;
            Some((tp.clone(), part, rolling))
        });
        let Some((tp, part, rolling)) = found else {
            return Ok(());
        };
        for rows in rolled.rows_written? {
            self.summary.files += 1;
            metrics::counter!("tally_archive_files_total").increment(1);
            metrics::counter!("tally_archive_rows_total").increment(rows as u64);
        }
        part.archived_to = rolling.archived_to;
        if let Some((hw, ms)) = part.pending {
            if part.archived_to >= hw {
                part.reached = Some((hw, ms));
            }
        }
        self.advance(&tp).await
    }

    /// Advance the partition's observation when the previous one was reached.
    pub(super) async fn observe(&mut self, tp: &Tp) -> Result<(), ArchiveError> {
        let Some(part) = self.parts.get_mut(tp) else {
            return Ok(());
        };
        let Some((hw, ms)) = part.pending else {
            return Ok(());
        };
        // An end offset says nothing of a position not known to be in the
        // log (a stopped partition, or one not read since its seek).
        if !part.read.is_reading() {
            return Ok(());
        }
        // Nothing buffered and nothing consumed past the durable point: the
        // pending observation is reached once everything below it is durable.
        if part.idle() && part.archived_to >= hw {
            part.reached = Some((hw, ms));
            let observed = now_ms();
            let high = watermarks(&self.consumer, &tp.0, tp.1).await?.high;
            part.pending = Some((high, observed));
            if part.archived_to >= high {
                part.reached = Some((high, observed));
            }
            if part.claim.reached != part.reached || part.claim.archived_to != part.archived_to {
                return self.advance(tp).await;
            }
        }
        Ok(())
    }

    /// Publish the partition's position (fenced), then commit it to Kafka
    /// (advisory, for lag tooling).
    pub(super) async fn advance(&mut self, tp: &Tp) -> Result<(), ArchiveError> {
        let Some(part) = self.parts.get_mut(tp) else {
            return Ok(());
        };
        let fenced = part
            .claim
            .advance(self.store.as_ref(), part.archived_to, part.reached)
            .await?;
        if fenced == Fenced::Lost {
            self.lose(tp);
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(part.archived_to))?;
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "advisory offset commit failed");
        }
        Ok(())
    }

    /// Compute the cut from every partition's stored progress and publish it
    /// if it moved forward.
    pub(super) async fn publish_cut(&mut self) -> Result<(), ArchiveError> {
        let counts = self.partition_counts().await?;
        let store = self.store.as_ref();
        let Some(cut) = progress::cut_from_progress(store, &counts, self.grid, self.grace).await?
        else {
            return Ok(());
        };
        if self.summary.cut.is_some_and(|c| c >= cut) {
            return Ok(());
        }
        match progress::publish_cut(store, cut, now_ms()).await {
            Ok(stored) => self.summary.cut = Some(stored),
            Err(ProgressError::Contested(path)) => {
                tracing::warn!(%path, "the cut kept changing under us; trying again later");
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}
