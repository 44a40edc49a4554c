//! The speed layer, mirrored in memory and kept current by version.
//!
//! [`SpeedMirror`] holds, per view, the slices (ingest epoch, event-time day)
//! at or above the view's floor (the cut of the snapshot in use), each with
//! its roll-up levels ([`slice::Slice`]). A sync ([`SpeedMirror::sync`])
//! reads, in one round trip, the flush version, each view's slice versions,
//! and for each slice the copy holds the cells scored above the version it
//! has read and the slice's logs past it: what the flushes since added to
//! its quantile and distinct sketches and the new values of the counters
//! they wrote. When the logs chain, the changed cells are built from them
//! ([`logged`]); otherwise one more round trip reads those cells' values,
//! for every view and slice side by side ([`sync`], [`read`]).
//! So its cost follows what the speed layer wrote since the last sync, not
//! what it holds, and it usually waits for Redis once: under load Redis is
//! running a flush's script most of the time, and a wait can last a whole
//! script.
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
mod logged;
pub(crate) mod read;
pub(crate) mod slice;
mod sync;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
}
