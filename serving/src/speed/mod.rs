//! The speed layer, mirrored in memory and kept current by version.
//!
//! [`SpeedMirror`] holds, per view, the slices (ingest epoch, event-time day)
//! at or above the view's floor (the cut of the snapshot in use), each with
//! its roll-up levels ([`slice::Slice`]). A sync ([`SpeedMirror::sync`])
//! reads, in one round trip, the flush version, each view's slice versions,
//! and for each slice the copy holds the cells scored above the version it
//! has read and what the flushes since added to its quantile sketches (the
//! slice's quantile log); when the version moved, one more round trip reads
//! those cells' values, for every view and slice side by side ([`read`]).
//! So its cost follows what the speed layer wrote since the last sync, not
//! what it holds, and it waits for Redis twice: under load Redis is running
//! a flush's script most of the time, and a wait can last a whole script.
//! A background loop syncs every `speed_poll`, and a
//! query that finds the copy older than `speed_max_age` syncs first
//! ([`SpeedMirror::ensure_fresh`]), so an answer includes every flush applied
//! that long before it.
//!
//! Guarantees:
//! - A query takes the slices it merges (`epoch >= cut`) as `Arc`s when it
//!   starts; a slice that drops below a new cut leaves the mirror only after
//!   `retire_after` (longer than any query runs), and a cut that moves down
//!   is loaded before the snapshot that has it is published
//!   ([`SpeedMirror::set_floor`]).
//! - Partition groups ([`tally_core::keys::Layout`]) are mirrored side by
//!   side, each with its own flush version and `born`, and summed as they
//!   are read into one roll-up per (epoch, day) ([`slice`]): a query merges
//!   as many cells as with one group (aggregates are monoids). A roll-up is
//!   built again from the groups' parts when one of them leaves it.
//! - Redis losing a group's data (a new `born`) empties that group's copy
//!   and rebuilds it; the other groups stay.
//! - A view whose slices Redis records under another definition fingerprint
//!   (`P:defs`: the speed layer runs another config) is not mirrored and not
//!   merged: its answers are the snapshot's alone and say
//!   `"degraded": ["speed_definition"]`, until the speed layer runs the same
//!   definition (it then rebuilds the view from the cut).
//! - Redis down (any group unreadable): queries answer from the copy as
//!   last synced and say `"degraded": ["redis"]`; after a failed sync they
//!   do not wait for another for `RETRY_AFTER`.

pub(crate) mod conn;
pub(crate) mod read;
pub(crate) mod slice;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_core::keys::Keys;
use tally_core::time::Epoch;
use tally_core::view::ViewDef;

pub(crate) use conn::{RedisReadError, RedisReader};
use slice::Slice;

/// After a failed sync, queries answer without syncing for this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Slices of one view.
#[derive(Debug, Default)]
struct ViewSlices {
    /// Lowest epoch mirrored; `None`: every epoch (no snapshot yet).
    floor: Option<Epoch>,
    /// A raise of the floor, due at that instant.
    raise: Option<(Instant, Option<Epoch>)>,
    /// Bumped when the floor moved down (or the definition flipped): slices
    /// below the old floor are read at the next sync whatever the flush
    /// versions say. The view is stale while this differs from `synced`.
    changes: u64,
    /// `changes` as it was when the last complete sync began: a change
    /// made during a sync (which may have read some groups with the old
    /// floor) keeps the view stale for the next one.
    synced: u64,
    /// Redis holds this view's slices under another definition: none are
    /// mirrored.
    other_definition: bool,
    /// By (partition group, epoch, day). With several groups, these are
    /// parts ([`Slice::part`]) and queries read `rollups`.
    slices: BTreeMap<(u32, Epoch, i64), Arc<Slice>>,
    /// With several groups: the roll-up across groups, by (epoch, day).
    rollups: BTreeMap<(Epoch, i64), Arc<Slice>>,
}

impl ViewSlices {
    /// Drop the slices `gone` names, by (group, epoch, day), and build
    /// again from the remaining parts each roll-up that held one of them.
    fn drop_slices(&mut self, view: &ViewDef, gone: impl Fn(u32, Epoch, i64) -> bool) {
        let mut touched = BTreeSet::new();
        self.slices.retain(|&(g, e, d), _| {
            let drop = gone(g, e, d);
            if drop {
                touched.insert((e, d));
            }
            !drop
        });
        for key in touched {
            if !self.rollups.contains_key(&key) {
                continue;
            }
            let parts: Vec<&Arc<Slice>> = self
                .slices
                .iter()
                .filter(|(&(_, e, d), _)| (e, d) == key)
                .map(|(_, s)| s)
                .collect();
            if parts.is_empty() {
                self.rollups.remove(&key);
                continue;
            }
            let rollup = Slice::new(view, key.0, key.1);
            {
                let mut w = rollup.write();
                for p in parts {
                    w.add_part(view, &p.read());
                }
            }
            self.rollups.insert(key, Arc::new(rollup));
        }
    }

    /// What queries read: with several groups (`split`) the roll-ups
    /// across groups, else the slices.
    fn readable(&self, split: bool) -> Box<dyn Iterator<Item = &Arc<Slice>> + '_> {
        if split {
            Box::new(self.rollups.values())
        } else {
            Box::new(self.slices.values())
        }
    }
}

fn at_or_above(floor: Option<Epoch>, epoch: Epoch) -> bool {
    floor.is_none_or(|f| epoch >= f)
}

/// What the copy has read of one partition group.
#[derive(Debug, Default, Clone, Copy)]
struct GroupHead {
    born: Option<i64>,
    /// The group's flush version its last complete sync read.
    version: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// By partition group.
    groups: Vec<GroupHead>,
    views: HashMap<String, ViewSlices>,
    /// When the last successful sync started (monotonic, wall ms).
    last_ok: Option<(Instant, i64)>,
    /// The last failed sync: when, and why. Cleared by a success.
    failed: Option<(Instant, String)>,
    /// Values that did not parse, over the life of the copy.
    skipped: usize,
}

/// What a query merges from the speed layer.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpeedView {
    /// Slices with `epoch >= cut` and a day in the query's range.
    pub slices: Vec<Arc<Slice>>,
    /// When the copy was last synced with Redis (epoch ms).
    pub synced_ms: Option<i64>,
    /// Whether the last sync failed (the copy may be behind).
    pub degraded: bool,
    /// Redis holds the view's slices under another definition: none are
    /// given, the answer lacks the speed layer's part.
    pub other_definition: bool,
    pub skipped: usize,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct SpeedMirror {
    redis: RedisReader,
    views: Vec<Arc<ViewDef>>,
    state: Mutex<State>,
    /// One sync at a time.
    syncing: tokio::sync::Mutex<()>,
    retire_after: Duration,
    /// Several partition groups: their slices are parts of roll-ups.
    split: bool,
}

impl SpeedMirror {
    pub(crate) fn new(
        redis: RedisReader,
        views: Vec<Arc<ViewDef>>,
        retire_after: Duration,
    ) -> Self {
        let state = State {
            groups: vec![GroupHead::default(); redis.layout().groups() as usize],
            views: views
                .iter()
                .map(|v| (v.name.clone(), ViewSlices::default()))
                .collect(),
            ..Default::default()
        };
        SpeedMirror {
            split: redis.layout().groups() > 1,
            redis,
            views,
            state: Mutex::new(state),
            syncing: tokio::sync::Mutex::new(()),
            retire_after,
        }
    }

    pub(crate) fn redis(&self) -> &RedisReader {
        &self.redis
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the copy is younger than `max_age`, or a sync failed lately.
    fn fresh_enough(&self, max_age: Duration) -> bool {
        let st = self.lock();
        st.last_ok.is_some_and(|(t, _)| t.elapsed() <= max_age)
            || st
                .failed
                .as_ref()
                .is_some_and(|(t, _)| t.elapsed() < RETRY_AFTER)
    }

    /// Sync unless the copy is younger than `max_age` (or a sync failed
    /// within `RETRY_AFTER`). Concurrent callers share one sync.
    pub(crate) async fn ensure_fresh(&self, max_age: Duration) {
        if self.fresh_enough(max_age) {
            return;
        }
        let _one = self.syncing.lock().await;
        if self.fresh_enough(max_age) {
            return;
        }
        self.sync_locked().await;
    }

    /// Sync now (waiting for one in progress first).
    pub(crate) async fn sync(&self) {
        let _one = self.syncing.lock().await;
        self.sync_locked().await;
    }

    /// When the copy was last synced with Redis (epoch ms).
    pub(crate) fn synced_ms(&self) -> Option<i64> {
        self.lock().last_ok.map(|(_, ms)| ms)
    }

    /// The slices a query over the days `first..=last` merges with a
    /// snapshot of cut `cut`.
    pub(crate) fn view(&self, view: &str, cut: Option<Epoch>, first: i64, last: i64) -> SpeedView {
        let st = self.lock();
        let other_definition = st.views.get(view).is_some_and(|v| v.other_definition);
        let slices = st
            .views
            .get(view)
            .filter(|v| !v.other_definition)
            .map(|v| {
                v.readable(self.split)
                    .filter(|s| at_or_above(cut, s.epoch) && (first..=last).contains(&s.day))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        SpeedView {
            slices,
            synced_ms: st.last_ok.map(|(_, ms)| ms),
            degraded: st.failed.is_some(),
            other_definition,
            skipped: st.skipped,
        }
    }

    /// Follow a new cut of `view`: a lower floor is marked to be read at
    /// the next sync (call [`SpeedMirror::sync`] before publishing the
    /// snapshot); a higher one retires slices after `retire_after`.
    /// Returns whether a sync is needed first.
    pub(crate) fn set_floor(&self, view: &str, cut: Option<Epoch>) -> bool {
        let mut st = self.lock();
        let Some(v) = st.views.get_mut(view) else {
            return false;
        };
        let lower = match (cut, v.floor) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(c), Some(f)) => c < f,
        };
        if lower {
            v.floor = cut;
            v.raise = None;
            v.changes += 1;
        } else if v.slices.is_empty() {
            // Nothing mirrored yet (startup): no query can hold a slice.
            v.floor = cut;
            v.raise = None;
        } else if cut != v.floor {
            v.raise = Some((Instant::now() + self.retire_after, cut));
        }
        lower
    }

    /// One sync; the caller holds `syncing`.
    async fn sync_locked(&self) {
        let started = Instant::now();
        let wall = tally_core::time::now_ms();
        match self.pull().await {
            Ok(()) => {
                let mut st = self.lock();
                st.last_ok = Some((started, wall));
                st.failed = None;
                metrics::histogram!("tally_serving_speed_sync_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                tracing::debug!(error = %e, "speed layer sync failed; answering from the copy");
                metrics::counter!("tally_serving_degraded_total", "component" => "redis")
                    .increment(1);
                self.lock().failed = Some((Instant::now(), e.to_string()));
            }
        }
    }

    /// Read what changed since the last sync into the copy, group by group.
    /// A group that cannot be read leaves its copy as it was (the others
    /// are read all the same); the sync then fails with its error.
    async fn pull(&self) -> Result<(), RedisReadError> {
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
            for (&(g, epoch, day), slice) in &v.slices {
                let d = slice.read();
                let exact = d.quantiles_at == Some(d.version);
                if let Some(k) = known.get_mut(g as usize) {
                    k[i].push(read::Since {
                        epoch,
                        day,
                        since: d.version,
                        log: with_log && d.version > 0 && exact,
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
        let wanted: Vec<read::Since> = todo
            .iter()
            .map(|t| read::Since {
                epoch: t.epoch,
                day: t.day,
                since: t.since,
                log: with_log && t.since > 0 && t.exact,
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
            let added = changed.quantiles_added(slice.since, until);
            let (quantiles, how) = match added {
                Some(_) => (slice::Quantiles::Added, "log"),
                None => (slice::Quantiles::Whole, "whole"),
            };
            if with_log {
                metrics::counter!("tally_serving_speed_quantile_reads_total", "from" => how)
                    .increment(1);
            }
            how_read.push(quantiles);
            // The slices side by side too, for the same reason.
            reads.push(async move {
                read::read_cells(&self.redis, keys, view, slice, until, &changed.cells, added).await
            });
        }
        let read = futures::future::join_all(reads).await;
        for ((t, quantiles), read) in todo.into_iter().zip(how_read).zip(read) {
            let (values, skipped, exact) = read?;
            {
                let mut data = t.slice.write();
                let mut rollup = t.rollup.as_ref().map(|r| r.write());
                for (bucket, group, aggs) in values {
                    data.set_cell(view, bucket, &group, aggs, quantiles, rollup.as_deref_mut());
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
