//! The fold of a query: snapshot rows and speed cells into output cells.
//!
//! [`Fold`] takes its inputs one UTC day at a time ([`Day`]): the snapshot's
//! rows of that day (each piece at its level, [`super::plan`]) and the cells
//! of the speed slices of that day. Every input row's group is mapped once
//! per source to its output group (filtered out, or projected on
//! `group_by`), and its measures are merged into the output cell (output
//! bucket, group) with the monoid; a distinct measure's sketches are only
//! noted, and unioned once per cell when the day is done, with one
//! [`Union`] (its cost follows the registers set, not the cells merged);
//! a quantile measure's inputs are noted too, and added up per cell
//! (`cell_quantiles.rs`) into the group's total. An
//! output bucket never spans two days (a granularity divides a day), so when
//! a day is done ([`Fold::finish_day`]) its cells are final: they are added
//! to the group totals and the grand total, and kept as plain values.
//! Memory follows one day's cells, not the range's.
//!
//! A group's total covers the whole range, so a coarser level may answer
//! it than the cells' granularity allows (a 24-hour query by hour: each
//! group's day in one row, not 24). When it does, the fold is made with
//! its sketch measures' totals *apart* (`totals.rs`): the cells' sketches
//! are counted (or, with a window, kept) and not merged into the totals,
//! and each day's rows at the totals' levels are merged into them instead,
//! a few merges per group where the cells took one per cell (counts, sums
//! and extremes still add up from the cells: they cost nothing to merge).
//! The day's inputs are noted into its cells in `cells.rs`.
//!
//! With a rolling window ([`super::window`]) a closed cell also keeps its
//! aggregates (a distinct measure as the cell's union sketch), and the
//! points are made from them when the fold is done: each point merges the
//! cells of its window.
//!
//! Guarantees: counts, integer sums, min and max are exact; distinct counts
//! are HyperLogLog unions (never sums), per cell, per group and overall;
//! quantile sketches merge exactly (counts per bucket add), and each cell,
//! group total and grand total answers its percentiles from its merged
//! sketch;
//! more than `max_cells` output cells stop the fold with
//! [`FoldError::TooManyCells`]; a set cancel flag stops it within a few
//! thousand rows ([`FoldError::Cancelled`]).

/// The fold's maps (see Cargo.toml for why foldhash).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tally_core::agg::{Agg, AggKind};
use tally_core::hll::{count_registers, Sliding, Union};
use tally_core::quantile::QuantileSketch;
use tally_core::view::ViewDef;

use super::cell_quantiles::{add_cell, Counts};
use super::parse::{Col, Query};
use super::window::{Cell, Window};
use crate::dto::{Final, Percentiles};
use crate::group::Group;
use crate::lookup::Table;
use crate::snapshot::day::Sketch;

mod cells;
mod totals;

/// Why a fold stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("the answer would hold more than {0} (bucket, group) cells")]
    TooManyCells(usize),
    #[error("cancelled")]
    Cancelled,
}

/// A source group not looked at yet.
const UNSEEN: u32 = u32::MAX;
/// A source group the filters drop.
const DROPPED: u32 = u32::MAX - 1;

/// Rows between two looks at the cancel flag.
const CHECK_EVERY: usize = 4096;

/// The fold state; see the module documentation.
#[derive(Debug)]
pub struct Fold {
    q: Query,
    /// Per view measure, its position in the output (if asked for).
    slot: Vec<Option<usize>>,
    kinds: Vec<AggKind>,
    out_ids: HashMap<Group, u32>,
    out_keys: Vec<Group>,
    /// Per output group: its final points and its running totals.
    points: Vec<Vec<(i64, Box<[Final]>)>>,
    totals: Vec<Box<[Agg]>>,
    grand: Box<[Agg]>,
    /// Final points so far.
    done: usize,
    max_cells: usize,
    /// Rows and cells folded, for the cancel check.
    work: usize,
    union: Union,
    /// The quantile accumulator each cell's inputs are added up in.
    counts: QuantileSketch,
    /// With a rolling window: which points to make, and per output group
    /// its closed cells' aggregates in time order.
    window: Option<Window>,
    cells: Vec<Vec<Cell>>,
    /// Per `[[lookup]]`, the table version this answer maps through.
    tables: Vec<Arc<Table>>,
    /// The sketch measures' totals are made apart from the cells
    /// (`totals.rs`), not from them.
    totals_apart: bool,
}

/// One output cell of the day in progress: its number in the day and the
/// measures merged so far (a distinct or quantile measure stays empty: its
/// inputs are noted in [`Day::sketches`] and [`Day::quantiles`]).
#[derive(Debug)]
struct Open {
    id: u32,
    aggs: Box<[Agg]>,
}

/// The output cells of one day, borrowing the day's inputs.
#[derive(Debug, Default)]
pub struct Day<'a> {
    open: HashMap<(i64, u32), Open>,
    /// (cell number, position in the answer, sketch) of every distinct
    /// input: unioned per cell and measure when the day is done.
    sketches: Vec<(u32, usize, Sketch<'a>)>,
    /// The same for every quantile input, added up per cell.
    quantiles: Vec<(u32, usize, Counts<'a>)>,
}

/// The source-group → output-group map of one source (a day file or a
/// slice); starts with every group unseen.
pub type GroupMap = Vec<u32>;

impl Fold {
    /// A fold of `q` on `view`; `tables` holds one table per `[[lookup]]`
    /// (the version in use, or an empty one mapping to its `missing`);
    /// `totals_apart`: the sketch measures' totals are folded apart
    /// (`totals.rs`; with a rolling window, over the range the fold reads,
    /// its lead-in included, as the totals from the cells were).
    pub fn new(
        view: &ViewDef,
        q: Query,
        max_cells: usize,
        tables: Vec<Arc<Table>>,
        totals_apart: bool,
    ) -> Fold {
        let window = Window::of(&q, view.granularity.as_ms());
        let mut slot = vec![None; view.measures.len()];
        for (pos, &mi) in q.measures.iter().enumerate() {
            slot[mi] = Some(pos);
        }
        let kinds: Vec<AggKind> = q.measures.iter().map(|&mi| view.measures[mi].agg).collect();
        let grand = kinds.iter().map(|&k| Agg::empty(k)).collect();
        Fold {
            q,
            slot,
            kinds,
            out_ids: HashMap::default(),
            out_keys: Vec::new(),
            points: Vec::new(),
            totals: Vec::new(),
            grand,
            done: 0,
            max_cells,
            work: 0,
            union: Union::default(),
            counts: QuantileSketch::new(),
            window,
            cells: Vec::new(),
            tables,
            totals_apart,
        }
    }

    /// The value of column `c` in source group `g` (a lookup applied).
    fn value(&self, g: &Group, c: Col) -> Option<Arc<str>> {
        let v = g.get(c.dim)?.as_ref()?;
        match c.lookup {
            None => Some(v.clone()),
            Some(l) => self.tables.get(l)?.get(v),
        }
    }

    fn empty(&self) -> Box<[Agg]> {
        self.kinds.iter().map(|&k| Agg::empty(k)).collect()
    }

    /// The output group of source group `g`, or [`DROPPED`].
    fn output_group(&mut self, g: &Group) -> u32 {
        let passes = self
            .q
            .filters
            .iter()
            .all(|(&c, allowed)| match self.value(g, c) {
                Some(v) => allowed.iter().any(|a| **a == *v),
                None => false,
            });
        if !passes {
            return DROPPED;
        }
        let key: Group = self.q.group_by.iter().map(|&c| self.value(g, c)).collect();
        if let Some(&id) = self.out_ids.get(&key) {
            return id;
        }
        let id = self.out_keys.len() as u32;
        self.out_keys.push(key.clone());
        self.out_ids.insert(key, id);
        self.points.push(Vec::new());
        self.cells.push(Vec::new());
        self.totals.push(self.empty());
        id
    }

    fn mapped(&mut self, map: &mut GroupMap, groups: &[Group], g: u32) -> u32 {
        let i = g as usize;
        if map.len() < groups.len() {
            map.resize(groups.len(), UNSEEN);
        }
        match map.get(i) {
            Some(&UNSEEN) => {
                let og = self.output_group(&groups[i]);
                map[i] = og;
                og
            }
            Some(&og) => og,
            None => DROPPED,
        }
    }

    fn tick(&mut self, n: usize, cancel: &AtomicBool) -> Result<(), FoldError> {
        self.work += n;
        if self.work >= CHECK_EVERY {
            self.work = 0;
            if cancel.load(Ordering::Relaxed) {
                return Err(FoldError::Cancelled);
            }
        }
        Ok(())
    }

    /// Close every cell of `day`: the inputs of its day are all folded in.
    pub fn finish_day(&mut self, day: Day<'_>) {
        let width = self.kinds.len();
        let (starts, sketches) =
            by_cell(&day.sketches, day.open.len(), width, Sketch::Registers(&[]));
        let none = Counts::Row {
            entries: &[],
            zeros: 0,
            held: 0,
        };
        let (q_starts, quantiles) = by_cell(&day.quantiles, day.open.len(), width, none);
        // Group by group, in time order within each: a group's running
        // totals (a dense sketch of 16 KiB per distinct measure) stay in the
        // cache while its cells are merged into them.
        let mut cells: Vec<_> = day.open.into_iter().collect();
        cells.sort_unstable_by_key(|&((ob, og), _)| (og, ob));
        let ends = self.q.percentiles.near_an_end();
        let apart = self.totals_apart;
        let mut rows = Vec::new();
        for ((ob, og), cell) in cells {
            let p = &self.q.percentiles;
            let mut finals: Box<[Final]> = (cell.aggs.iter())
                .map(|a| match a {
                    // Set below from the cell's inputs: not answered twice.
                    Agg::Quantiles(_) => Final::Count(0),
                    a => Final::of(a, p),
                })
                .collect();
            // With a window the cell is kept whole, its sketches unioned.
            let mut kept = self.window.is_some().then(|| Cell {
                t: ob,
                aggs: cell.aggs.clone(),
                // Registers only where a distinct measure may set them.
                registers: match self.kinds.contains(&AggKind::Distinct) {
                    true => vec![Vec::new(); width].into(),
                    false => Box::default(),
                },
            });
            let id = cell.id as usize;
            // Each quantile measure's inputs, into the group's total; the
            // cell answered from them (or kept whole for a window).
            for pos in 0..width {
                let Agg::Quantiles(total) = &mut self.totals[og as usize][pos] else {
                    continue;
                };
                let inputs = &quantiles[q_starts[id * width + pos]..q_starts[id * width + pos + 1]];
                let keep = match kept.as_mut().and_then(|k| k.aggs.get_mut(pos)) {
                    Some(Agg::Quantiles(k)) => Some(k),
                    _ => None,
                };
                let (counts, total) = (&mut self.counts, (!apart).then_some(total));
                if let Some(f) = add_cell(inputs, total, counts, &mut rows, keep, p, ends) {
                    finals[pos] = f;
                }
            }
            // A kept cell's registers, in no particular order (what the
            // window's sliding union takes): each position is set once.
            let mut keep = |pos: usize, registers: Vec<u32>| {
                if let Some(r) = kept.as_mut().and_then(|k| k.registers.get_mut(pos)) {
                    *r = registers;
                }
            };
            let totals = &mut self.totals[og as usize];
            // The sketches of each distinct measure, unioned once. The grand
            // total's sketch is the union of the groups' (at the end): one
            // merge per group, not per cell.
            for pos in 0..width {
                let part = &sketches[starts[id * width + pos]..starts[id * width + pos + 1]];
                let Agg::Distinct(total) = &mut totals[pos] else {
                    continue;
                };
                // One sketch (a row of a coarse level, often dense):
                // nothing to union.
                match part {
                    [] => continue,
                    [Sketch::Registers(regs)] => {
                        if self.window.is_none() {
                            finals[pos] = Final::Distinct(count_registers(regs));
                        }
                        if !apart {
                            total.merge_registers(regs);
                        }
                        if self.window.is_some() {
                            keep(pos, regs.to_vec());
                        }
                        continue;
                    }
                    [Sketch::Dense(h, count)] => {
                        if self.window.is_none() {
                            finals[pos] = Final::Distinct(count.unwrap_or_else(|| h.count()));
                        }
                        if !apart {
                            total.merge(h);
                        }
                        if self.window.is_some() {
                            keep(pos, h.entries());
                        }
                        continue;
                    }
                    _ => {}
                }
                self.union.clear();
                for s in part {
                    match s {
                        Sketch::Registers(regs) => self.union.add_registers(regs),
                        Sketch::Dense(h, _) => self.union.add(h),
                    }
                }
                if self.window.is_none() {
                    // Nothing keeps the union: counted, merged (unless the
                    // totals are apart) and emptied in one pass.
                    finals[pos] = Final::Distinct(match apart {
                        true => self.union.drain(),
                        false => self.union.drain_into(total),
                    });
                    continue;
                }
                let taken = match apart {
                    true => self.union.take(),
                    false => self.union.take_into(total),
                };
                keep(pos, taken);
            }
            // A bucket where every requested measure is still its identity
            // (e.g. a `max` over events without the field) has nothing to
            // show. Dropping it keeps the answer independent of which layer
            // the events are in: the snapshot has a row per bucket with
            // events, Redis only non-empty parts. A kept cell is answered by
            // the window, not by `finals` (its sketches were not counted):
            // its aggregates say it.
            let nothing = match &kept {
                Some(k) => k.aggs.iter().all(is_identity) && k.registers.iter().all(Vec::is_empty),
                None => finals.iter().all(Final::is_nothing),
            };
            if nothing {
                continue;
            }
            for (i, a) in cell.aggs.iter().enumerate() {
                if !matches!(a.kind(), AggKind::Distinct | AggKind::Quantiles) {
                    totals[i].merge(a);
                }
            }
            match kept {
                Some(k) => self.cells[og as usize].push(k),
                None => self.points[og as usize].push((ob, finals)),
            }
            self.done += 1;
        }
    }

    /// The folded answer: per output group (projected values), its points
    /// in time order and its totals; and the grand total.
    pub fn into_parts(mut self) -> Folded {
        // The grand total is the merge of the groups' totals: one merge
        // per group, not per cell.
        for (pos, grand) in self.grand.iter_mut().enumerate() {
            let kind = grand.kind();
            for t in self.totals.iter().filter(|t| t[pos].kind() == kind) {
                grand.merge(&t[pos]);
            }
        }
        let p: &Percentiles = &self.q.percentiles;
        if let Some(w) = &self.window {
            let mut sliding: Vec<Sliding> = (self.kinds.iter())
                .filter(|&&k| k == AggKind::Distinct)
                .map(|_| Sliding::default())
                .collect();
            for (points, cells) in self.points.iter_mut().zip(&self.cells) {
                *points = w.points(cells, &self.kinds, &mut sliding, p);
            }
        }
        Folded {
            totals: self
                .totals
                .iter()
                .map(|t| t.iter().map(|a| Final::of(a, p)).collect())
                .collect(),
            grand: self.grand.iter().map(|a| Final::of(a, p)).collect(),
            keys: self.out_keys,
            points: self.points,
        }
    }
}

/// Whether `a` is its measure's identity: what [`Final::is_nothing`] says of
/// its answer.
fn is_identity(a: &Agg) -> bool {
    match a {
        Agg::Count(c) => *c == 0,
        Agg::Sum { int, float } => *int == 0 && *float == 0.0,
        Agg::Min(v) | Agg::Max(v) => v.is_none(),
        Agg::Distinct(h) => h.is_empty(),
        Agg::Quantiles(q) => q.is_empty(),
    }
}

/// What a finished fold holds.
#[derive(Debug)]
pub struct Folded {
    pub keys: Vec<Group>,
    pub points: Vec<Vec<(i64, Box<[Final]>)>>,
    pub totals: Vec<Box<[Final]>>,
    pub grand: Box<[Final]>,
}

/// The inputs noted for a day's cells, in place by (cell, position in the
/// answer): `out[starts[k]..starts[k + 1]]` are those of cell `id`,
/// measure `pos`, with `k = id * width + pos`, in the order they were
/// noted. A counting sort: linear in the inputs, where a comparison sort
/// of hundreds of sketches per cell was a tenth of a distinct answer.
fn by_cell<T: Copy>(
    noted: &[(u32, usize, T)],
    cells: usize,
    width: usize,
    fill: T,
) -> (Vec<usize>, Vec<T>) {
    let mut starts = vec![0usize; cells * width + 1];
    for &(id, pos, _) in noted {
        starts[id as usize * width + pos + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut next = starts.clone();
    let mut out = vec![fill; noted.len()];
    for &(id, pos, s) in noted {
        let k = id as usize * width + pos;
        out[next[k]] = s;
        next[k] += 1;
    }
    (starts, out)
}
