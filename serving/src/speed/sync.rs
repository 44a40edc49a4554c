//! A sync of the speed copy: what changed in Redis since the last one,
//! read into the copy group by group ([`SpeedMirror::sync`] holds the lock
//! that keeps syncs one at a time).
//!
//! One round trip when a flush was applied to slices the copy holds: the
//! head ([`read::head`]: the flush version, the slices' versions, and the
//! changes of the slices the copy holds, with their counter, quantile and
//! sketch logs), from which the changed cells are built ([`logged`]). A
//! slice whose logs do not chain from the copy's version (a new slice, a
//! copy too far behind, a counter past 2^53) takes a second: its changed
//! cells' values, for every view and slice at once. Under load Redis is
//! running a flush's script most of the time and a read queued behind one
//! waits for all of it, so the number of round trips, not their size,
//! decides how soon a flush shows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tally_core::keys::Keys;
use tally_core::time::Epoch;
use tally_core::view::ViewDef;

use futures::future::Either;

use super::slice::{Given, Slice};
use super::{at_or_above, logged, read, GroupHead, RedisReadError, SpeedMirror};

impl SpeedMirror {
    /// Read what changed since the last sync into the copy, group by group.
    /// A group that cannot be read leaves its copy as it was (the others
    /// are read all the same); the sync then fails with its error.
    pub(super) async fn pull(&self) -> Result<(), RedisReadError> {
        let groups = self.redis.layout().all();
        let names: Vec<&str> = self.views.iter().map(|v| v.name.as_str()).collect();
        let known = self.known_slices(groups.len());
        let heads = futures::future::join_all(
            groups
                .iter()
                .zip(&known)
                .map(|(k, known)| read::head(&self.redis, k, &names, known)),
        )
        .await;
        let mut error = None;
        let (seen, stale) = {
            let mut st = self.lock();
            for view in &self.views {
                let fp = self.redis.layout().fingerprint(view);
                let other = heads
                    .iter()
                    .flatten()
                    .any(|h| h.definitions.get(&view.name).is_some_and(|f| *f != fp));
                if let Some(v) = st.views.get_mut(&view.name) {
                    if other != v.other_definition {
                        // Read again from scratch either way.
                        v.slices.clear();
                        v.rollups.clear();
                        v.changes += 1;
                    }
                    v.other_definition = other;
                }
            }
            for (g, head) in heads.iter().enumerate() {
                let Ok(head) = head else { continue };
                let had = st.groups[g];
                if had.born != head.born || head.version < had.version {
                    // A new counter: Redis lost the group's data, or this
                    // is the first sync.
                    st.groups[g] = GroupHead {
                        born: head.born,
                        version: None,
                    };
                    for view in &self.views {
                        if let Some(v) = st.views.get_mut(&view.name) {
                            v.drop_slices(view, |sg, _, _| sg as usize == g);
                        }
                    }
                }
            }
            let now = Instant::now();
            for v in st.views.values_mut() {
                if let Some((due, floor)) = v.raise {
                    if due <= now {
                        v.floor = floor;
                        v.raise = None;
                        v.slices.retain(|&(_, e, _), _| at_or_above(floor, e));
                        v.rollups.retain(|&(e, _), _| at_or_above(floor, e));
                    }
                }
            }
            let stale = st.views.values().any(|v| v.changes != v.synced);
            let seen: HashMap<String, u64> = st
                .views
                .iter()
                .map(|(name, v)| (name.clone(), v.changes))
                .collect();
            (seen, stale)
        };
        for ((g, keys), head) in groups.iter().enumerate().zip(heads) {
            let (version, slices, changes) = match head {
                Ok(h) => (h.version, h.slices, h.changes),
                Err(e) => {
                    error = error.or(Some(e));
                    continue;
                }
            };
            if version.is_none() || (!stale && self.lock().groups[g].version == version) {
                self.lock().groups[g].version = version;
                continue;
            }
            let known = known[g].iter().zip(changes).map(|(k, c)| {
                k.iter()
                    .zip(c)
                    .map(|(k, c)| ((k.epoch, k.day), (*k, c)))
                    .collect()
            });
            if let Err(e) = self.pull_group(g as u32, keys, slices, known).await {
                error = error.or(Some(e));
                continue;
            }
            self.lock().groups[g].version = version;
        }
        if let Some(e) = error {
            return Err(e);
        }
        for (name, v) in self.lock().views.iter_mut() {
            if let Some(&c) = seen.get(name) {
                v.synced = c;
            }
        }
        Ok(())
    }

    /// Per group, per view (in the order of `self.views`): the slices the
    /// copy holds, with the version it has read.
    fn known_slices(&self, groups: usize) -> Vec<Vec<Vec<read::Since>>> {
        let st = self.lock();
        let mut known = vec![vec![Vec::new(); self.views.len()]; groups];
        for (i, view) in self.views.iter().enumerate() {
            let Some(v) = st.views.get(&view.name) else {
                continue;
            };
            let with_log = !view.quantile_measures().is_empty();
            let with_sketch_log = !view.distinct_measures().is_empty();
            let with_counter_log = view.has_counters();
            for (&(g, epoch, day), slice) in &v.slices {
                let d = slice.read();
                let exact = d.quantiles_at == Some(d.version);
                if let Some(k) = known.get_mut(g as usize) {
                    k[i].push(read::Since {
                        epoch,
                        day,
                        since: d.version,
                        log: with_log && d.version > 0 && exact,
                        sketch_log: with_sketch_log && d.version > 0,
                        counter_log: with_counter_log && d.version > 0,
                    });
                }
            }
        }
        known
    }

    /// Bring every view's slices of one group up to the `versions` its
    /// head read, with the changes it read of the slices it knew (per
    /// view, in the order of `self.views`).
    async fn pull_group(
        &self,
        group: u32,
        keys: &Keys,
        versions: Vec<HashMap<(Epoch, i64), u64>>,
        known: impl Iterator<Item = Known>,
    ) -> Result<(), RedisReadError> {
        // The views side by side: their reads pipeline on the connection,
        // so a sync waits for Redis once per step, not once per view and
        // step. Under load Redis is running a flush's script most of the
        // time, and each wait can last a whole script.
        let pulls = self
            .views
            .iter()
            .zip(versions)
            .zip(known)
            .map(|((view, live), known)| self.pull_view(group, keys, view, live, known));
        futures::future::join_all(pulls).await.into_iter().collect()
    }

    /// Bring one view's slices of one group up to the versions in `live`;
    /// the changes in `known` are used where they were read from the
    /// version the copy holds, the others are read now.
    async fn pull_view(
        &self,
        group: u32,
        keys: &Keys,
        view: &Arc<ViewDef>,
        live: HashMap<(Epoch, i64), u64>,
        mut known: Known,
    ) -> Result<(), RedisReadError> {
        let todo: Vec<Todo> = {
            let mut st = self.lock();
            let Some(v) = st.views.get_mut(&view.name) else {
                return Ok(());
            };
            if v.other_definition {
                return Ok(());
            }
            // Expired in Redis: gone here too.
            v.drop_slices(view, |g, e, d| g == group && !live.contains_key(&(e, d)));
            let floor = v.floor;
            let mut todo: Vec<Todo> = Vec::new();
            for (&(epoch, day), &version) in &live {
                if !at_or_above(floor, epoch) {
                    continue;
                }
                let (since, exact, slice, new) = match v.slices.get(&(group, epoch, day)) {
                    Some(s) => {
                        let d = s.read();
                        let exact = d.quantiles_at == Some(d.version);
                        (d.version, exact, s.clone(), false)
                    }
                    None if self.split => (0, true, Arc::new(Slice::part(view, epoch, day)), true),
                    None => (0, true, Arc::new(Slice::new(view, epoch, day)), true),
                };
                if version <= since {
                    continue;
                }
                let rollup = self.split.then(|| {
                    v.rollups
                        .entry((epoch, day))
                        .or_insert_with(|| Arc::new(Slice::new(view, epoch, day)))
                        .clone()
                });
                todo.push(Todo {
                    epoch,
                    day,
                    since,
                    exact,
                    version,
                    slice,
                    rollup,
                    new,
                });
            }
            todo.sort_by_key(|t| (t.epoch, t.day));
            todo
        };
        if todo.is_empty() {
            return Ok(());
        }
        let with_log = !view.quantile_measures().is_empty();
        let with_sketch_log = !view.distinct_measures().is_empty();
        let with_counter_log = view.has_counters();
        let wanted: Vec<read::Since> = todo
            .iter()
            .map(|t| read::Since {
                epoch: t.epoch,
                day: t.day,
                since: t.since,
                log: with_log && t.since > 0 && t.exact,
                sketch_log: with_sketch_log && t.since > 0,
                counter_log: with_counter_log && t.since > 0,
            })
            .collect();
        let mut changes: Vec<Option<read::Changes>> = wanted
            .iter()
            .map(|w| match known.remove(&(w.epoch, w.day)) {
                Some((k, c)) if k == *w => Some(c),
                _ => None,
            })
            .collect();
        let missing: Vec<read::Since> = wanted
            .iter()
            .zip(&changes)
            .filter(|(_, c)| c.is_none())
            .map(|(w, _)| *w)
            .collect();
        if !missing.is_empty() {
            let mut read = read::changes(&self.redis, keys, &view.name, &missing)
                .await?
                .into_iter();
            for c in changes.iter_mut().filter(|c| c.is_none()) {
                *c = read.next();
            }
        }
        let mut how_read = Vec::with_capacity(todo.len());
        let mut reads = Vec::with_capacity(todo.len());
        for ((changed, slice), t) in changes.into_iter().zip(&wanted).zip(&todo) {
            let changed = changed.unwrap_or_default();
            let until = t.version;
            let added = read::Added {
                quantiles: changed.quantiles_added(slice.since, until),
                distinct: changed.sketches_added(slice.since, until),
            };
            let quantiles = given(added.quantiles.is_some(), with_log, "quantile");
            let distinct = given(added.distinct.is_some(), with_sketch_log, "sketch");
            how_read.push((quantiles, distinct));
            let counters = match with_counter_log {
                true => changed.counters_through(slice.since, until),
                false => Some(HashMap::new()),
            };
            given(counters.is_some(), with_counter_log, "counter");
            let from_logs = !t.new
                && (!with_log || added.quantiles.is_some())
                && (!with_sketch_log || added.distinct.is_some());
            if let Some(counters) = counters.filter(|_| from_logs) {
                let old = t.slice.read();
                let (cells, skipped) = logged::cells(view, &old, &changed.cells, &counters, added);
                reads.push(Either::Left(futures::future::ready(Ok((
                    cells, skipped, true,
                )))));
                continue;
            }
            // The slices side by side too, for the same reason.
            reads.push(Either::Right(async move {
                read::read_cells(&self.redis, keys, view, slice, until, &changed.cells, added).await
            }));
        }
        let read = futures::future::join_all(reads).await;
        for ((t, (quantiles, distinct)), read) in todo.into_iter().zip(how_read).zip(read) {
            let (values, skipped, exact) = read?;
            {
                let mut data = t.slice.write();
                let mut rollup = t.rollup.as_ref().map(|r| r.write());
                for cell in values {
                    data.set_cell(
                        view,
                        cell.bucket,
                        &cell.group,
                        cell.aggs,
                        quantiles,
                        distinct,
                        rollup.as_deref_mut(),
                    );
                }
                data.version = t.version;
                data.quantiles_at = exact.then_some(t.version);
            }
            let mut st = self.lock();
            st.skipped += skipped;
            if t.new {
                if let Some(v) = st.views.get_mut(&view.name) {
                    if at_or_above(v.floor, t.epoch) {
                        v.slices.insert((group, t.epoch, t.day), t.slice);
                    }
                }
            }
        }
        Ok(())
    }
}

/// How one kind of sketch of a slice is read: from its log when the log
/// chains (`logged`), else whole; counted when the view has such sketches
/// (`tally_serving_speed_{kind}_reads_total`).
fn given(logged: bool, has_log: bool, kind: &'static str) -> Given {
    let (given, from) = if logged {
        (Given::Added, "log")
    } else {
        (Given::Whole, "whole")
    };
    if has_log {
        let name = format!("tally_serving_speed_{kind}_reads_total");
        metrics::counter!(name, "from" => from).increment(1);
    }
    given
}

/// What a sync's head read of the slices of one view the copy held: by
/// (epoch, day), what was asked and the changes read.
type Known = HashMap<(Epoch, i64), (read::Since, read::Changes)>;

/// One slice of one group to bring up to date.
struct Todo {
    epoch: Epoch,
    day: i64,
    /// The version read so far, and the one to read up to.
    since: u64,
    /// The copy's quantile sketches are exactly at `since`.
    exact: bool,
    version: u64,
    slice: Arc<Slice>,
    /// The roll-up across groups `slice` is a part of.
    rollup: Option<Arc<Slice>>,
    /// `slice` is not in the mirror yet.
    new: bool,
}
