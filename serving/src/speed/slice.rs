//! One speed-layer slice (view, ingest epoch, event-time day) mirrored in
//! memory, with its roll-up levels.
//!
//! The mirror sets a cell (bucket, group) of the view's own level to the
//! absolute value Redis holds ([`SliceData::set_cell`]), except sketches
//! read as what the flushes since added ([`Given::Added`]: quantile counts
//! added, distinct registers merged), which go into the cell and into
//! every level as they are; the coarser levels
//! of [`ViewDef::levels`] (1h, 1d) follow at once: counts, sums and
//! quantile sketches by the difference from the cell's previous value, min,
//! max and distinct by a merge (Redis only ever lowers a min, raises a max
//! and adds registers to a sketch). So a query reads a slice at the
//! coarsest level that answers it, as it reads the snapshot.
//!
//! With several partition groups, each group's slice is a *part*
//! ([`Slice::part`]: its own level only, kept to know each cell's previous
//! value) and one *roll-up across groups* per (epoch, day) holds every
//! level of the sum of the parts: the same change goes into it at every
//! level, including the view's own. Queries read the roll-up, so they merge
//! as many cells as with one group.
//!
//! Guarantee: every level holds the roll-up of the cells set so far (of
//! every part, for a roll-up across groups), exactly for counts, integer
//! sums, min, max, distinct and quantile sketches (float sums up to
//! rounding).

use std::collections::{BTreeMap, HashMap};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use tally_core::agg::Agg;
use tally_core::time::Epoch;
use tally_core::view::ViewDef;

use crate::group::{Group, GroupDict};

/// Cells of one level: bucket → group index → one aggregate per measure.
pub(crate) type Cells = BTreeMap<i64, HashMap<u32, Box<[Agg]>>>;

/// One level of a slice.
#[derive(Debug)]
pub struct Level {
    pub ms: i64,
    pub cells: Cells,
}

/// What a slice holds.
#[derive(Debug)]
pub struct SliceData {
    /// The slice's version in Redis that this copy has read up to.
    pub version: u64,
    /// The version the copy's quantile sketches are exactly at. `None`:
    /// they were read whole at a later version and the quantile log could
    /// not take the flushes past `version` back out (it did not reach), so
    /// adding the log from `version` could count those twice: the next
    /// sync reads whole.
    pub quantiles_at: Option<u64>,
    /// The view's levels, finest first.
    pub levels: Vec<Level>,
    dict: GroupDict,
    /// Group JSON text → group index; `None`: not a group of this view.
    by_text: HashMap<Box<str>, Option<u32>>,
}

/// How a cell's sketch measures (quantiles, distinct) are given to
/// [`SliceData::set_cell`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Given {
    /// The whole sketch, as Redis holds it.
    Whole,
    /// What was added to the sketch since the copy last set the cell.
    Added,
}

/// A mirrored slice.
#[derive(Debug)]
pub(crate) struct Slice {
    pub epoch: Epoch,
    pub day: i64,
    data: RwLock<SliceData>,
}

impl Slice {
    /// A slice with every level of `view`: one group's, or the roll-up
    /// across groups.
    pub(crate) fn new(view: &ViewDef, epoch: Epoch, day: i64) -> Slice {
        Slice::with_levels(view, epoch, day, usize::MAX)
    }

    /// One partition group's part of a slice that a roll-up across groups
    /// answers for: the view's own level only.
    pub(crate) fn part(view: &ViewDef, epoch: Epoch, day: i64) -> Slice {
        Slice::with_levels(view, epoch, day, 1)
    }

    fn with_levels(view: &ViewDef, epoch: Epoch, day: i64, n: usize) -> Slice {
        Slice {
            epoch,
            day,
            data: RwLock::new(SliceData {
                version: 0,
                quantiles_at: Some(0),
                levels: view
                    .levels()
                    .into_iter()
                    .take(n)
                    .map(|g| Level {
                        ms: g.as_ms(),
                        cells: Cells::new(),
                    })
                    .collect(),
                dict: GroupDict::default(),
                by_text: HashMap::new(),
            }),
        }
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, SliceData> {
        // A poisoned lock means a panic elsewhere with the data intact.
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, SliceData> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl SliceData {
    pub fn groups(&self) -> &[Group] {
        self.dict.groups()
    }

    /// The cells of level `ms` whose bucket starts in `[from, to)`, bucket
    /// by bucket in time order (none when the slice has no such level).
    pub fn cells_in(
        &self,
        ms: i64,
        from: i64,
        to: i64,
    ) -> impl Iterator<Item = (i64, &HashMap<u32, Box<[Agg]>>)> + '_ {
        let level = self.levels.iter().find(|l| l.ms == ms);
        level
            .into_iter()
            .flat_map(move |l| l.cells.range(from..to).map(|(&b, c)| (b, c)))
    }

    /// The cell (`bucket`, group `text`) of the view's own level, as the
    /// copy holds it.
    pub fn cell(&self, bucket: i64, text: &str) -> Option<&[Agg]> {
        let g = (*self.by_text.get(text)?)?;
        let cells = self.levels.first()?.cells.get(&bucket)?;
        cells.get(&g).map(|a| &a[..])
    }

    /// The index of the group written as `text` (a JSON array), `None` when it
    /// is not a group of `view` (another arity: another definition wrote it).
    fn group_id(&mut self, view: &ViewDef, text: &str) -> Option<u32> {
        if let Some(id) = self.by_text.get(text) {
            return *id;
        }
        let id = tally_core::keys::parse_group(text)
            .filter(|g| g.len() == view.dimensions.len())
            .map(|g| self.dict.intern(g.iter().map(|v| v.as_deref())));
        self.by_text.insert(text.into(), id);
        id
    }

    /// Set the cell (`bucket`, group `text`) of the view's own level to
    /// `aggs` (one per measure of the view; its quantile sketches whole or
    /// added, as `quantiles` says, its distinct sketches as `distinct`
    /// says) and roll the change up, into this slice's coarser levels and
    /// into every level of `rollup` (the roll-up across groups this slice
    /// is a part of). Returns false when the group is not one of `view`'s.
    // The cell, its values, how its two kinds of sketch are given, and
    // the roll-up across groups: one call per cell read.
    #[allow(clippy::too_many_arguments)]
    pub fn set_cell(
        &mut self,
        view: &ViewDef,
        bucket: i64,
        text: &str,
        aggs: Box<[Agg]>,
        quantiles: Given,
        distinct: Given,
        rollup: Option<&mut SliceData>,
    ) -> bool {
        let Some(g) = self.group_id(view, text) else {
            return false;
        };
        let Some((base, coarser)) = self.levels.split_first_mut() else {
            return false;
        };
        let cells = base.cells.entry(bucket).or_default();
        let old = cells.get(&g).map(|o| &o[..]);
        let change = Change {
            old,
            new: &aggs,
            quantiles,
        };
        roll_levels(coarser, view, bucket, g, &change);
        if let Some(r) = rollup {
            if let Some(rg) = r.group_id(view, text) {
                roll_levels(&mut r.levels, view, bucket, rg, &change);
            }
        }
        let mut value = aggs;
        if let Some(mut old) = cells.remove(&g) {
            // What was added, merged into what the cell held.
            for (v, o) in value.iter_mut().zip(old.iter_mut()) {
                match (&mut *v, o) {
                    (Agg::Quantiles(added), Agg::Quantiles(was)) if quantiles == Given::Added => {
                        was.merge(added);
                        std::mem::swap(added, was);
                    }
                    (Agg::Distinct(added), Agg::Distinct(was)) if distinct == Given::Added => {
                        was.merge(added);
                        std::mem::swap(added, was);
                    }
                    _ => {}
                }
            }
        }
        cells.insert(g, value);
        true
    }

    /// Add every cell of `part`'s own level to every level of this
    /// roll-up: how a roll-up across groups is built again when a part
    /// leaves it.
    pub fn add_part(&mut self, view: &ViewDef, part: &SliceData) {
        let Some(base) = part.levels.first() else {
            return;
        };
        for (&bucket, cells) in &base.cells {
            for (&pg, aggs) in cells {
                let values = part.dict.groups()[pg as usize].iter().map(|v| v.as_deref());
                let g = self.dict.intern(values);
                let change = Change {
                    old: None,
                    new: aggs,
                    quantiles: Given::Whole,
                };
                roll_levels(&mut self.levels, view, bucket, g, &change);
            }
        }
    }
}

/// One cell's change: from `old` to `new`, whose quantile sketches are
/// whole or what was added to `old`'s.
struct Change<'a> {
    old: Option<&'a [Agg]>,
    new: &'a [Agg],
    quantiles: Given,
}

/// Move the cells of group `g` covering `bucket` in `levels` by `change`.
fn roll_levels(levels: &mut [Level], view: &ViewDef, bucket: i64, g: u32, change: &Change<'_>) {
    for level in levels {
        let b = bucket.div_euclid(level.ms) * level.ms;
        let cell = level
            .cells
            .entry(b)
            .or_default()
            .entry(g)
            .or_insert_with(|| view.measures.iter().map(|m| Agg::empty(m.agg)).collect());
        for (i, (acc, new)) in cell.iter_mut().zip(change.new.iter()).enumerate() {
            match (acc, change.quantiles) {
                (Agg::Quantiles(a), Given::Added) => {
                    if let Agg::Quantiles(added) = new {
                        a.merge(added);
                    }
                }
                (acc, _) => roll(acc, change.old.map(|o| &o[i]), new),
            }
        }
    }
}

/// Move `acc` (a roll-up) from including `old` to including `new`.
fn roll(acc: &mut Agg, old: Option<&Agg>, new: &Agg) {
    match (acc, old, new) {
        (Agg::Count(a), old, Agg::Count(n)) => {
            let o = match old {
                Some(Agg::Count(o)) => *o,
                _ => 0,
            };
            *a = (i128::from(*a) - i128::from(o) + i128::from(*n)).max(0) as u64;
        }
        (Agg::Sum { int, float }, old, Agg::Sum { int: ni, float: nf }) => {
            let (oi, of) = match old {
                Some(Agg::Sum { int, float }) => (*int, *float),
                _ => (0, 0.0),
            };
            *int += ni - oi;
            *float += nf - of;
        }
        // A quantile sketch's counts only grow in Redis: by the difference.
        (Agg::Quantiles(a), old, Agg::Quantiles(n)) => {
            if let Some(Agg::Quantiles(o)) = old {
                a.subtract(o);
            }
            a.merge(n);
        }
        // Redis only lowers a min, raises a max, adds registers to a sketch.
        (acc, _, new) => acc.merge(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::agg::Num;

    fn view() -> ViewDef {
        serde_json::from_value(serde_json::json!({
            "name": "v", "granularity": "1m", "dimensions": ["properties.page"],
            "measures": [
                {"name": "n", "agg": "count"},
                {"name": "s", "agg": "sum", "field": "properties.x"},
                {"name": "lo", "agg": "min", "field": "properties.x"},
                {"name": "u", "agg": "distinct", "field": "user_id"},
                {"name": "q", "agg": "quantiles", "field": "properties.x"}
            ]
        }))
        .unwrap()
    }

    fn aggs(n: u64, s: i64, lo: f64, users: &[&str]) -> Box<[Agg]> {
        let mut sum = Agg::empty(tally_core::agg::AggKind::Sum);
        sum.add_num(Num::Int(s));
        let mut u = Agg::empty(tally_core::agg::AggKind::Distinct);
        for x in users {
            u.add_key(x.as_bytes());
        }
        let mut q = Agg::empty(tally_core::agg::AggKind::Quantiles);
        for _ in 0..n {
            q.add_num(Num::Float(lo));
        }
        vec![Agg::Count(n), sum, Agg::Min(Some(lo)), u, q].into_boxed_slice()
    }

    #[test]
    fn coarser_levels_follow_every_change_of_a_cell() {
        let v = view();
        let s = Slice::new(&v, 1, 0);
        let mut d = s.write();
        let g = r#"["/a"]"#;
        assert!(d.set_cell(
            &v,
            60_000,
            g,
            aggs(2, 10, 5.0, &["x"]),
            Given::Whole,
            Given::Whole,
            None
        ));
        assert!(d.set_cell(
            &v,
            120_000,
            g,
            aggs(1, -3, 7.0, &["y"]),
            Given::Whole,
            Given::Whole,
            None
        ));
        // The first cell grows, as Redis values do.
        assert!(d.set_cell(
            &v,
            60_000,
            g,
            aggs(5, 12, 4.0, &["x", "z"]),
            Given::Whole,
            Given::Whole,
            None
        ));
        assert!(!d.set_cell(
            &v,
            60_000,
            r#"["/a","extra"]"#,
            aggs(1, 1, 1.0, &[]),
            Given::Whole,
            Given::Whole,
            None
        ));
        let hour = &d.levels[1].cells[&0];
        let day = &d.levels[2].cells[&0];
        let gid = 0;
        for level in [hour, day] {
            let cell = &level[&gid];
            assert_eq!(cell[0], Agg::Count(6));
            assert_eq!(cell[1], Agg::Sum { int: 9, float: 0.0 });
            assert_eq!(cell[2], Agg::Min(Some(4.0)));
            assert_eq!(cell[3].value(), Some(3.0));
            // The first cell's sketch replaced (5 × 4.0), the second's added.
            let mut want = tally_core::quantile::QuantileSketch::new();
            (0..5).for_each(|_| want.add(4.0));
            want.add(7.0);
            assert_eq!(cell[4], Agg::Quantiles(want));
        }
        assert_eq!(d.levels[0].cells.len(), 2);
    }

    #[test]
    fn distinct_sketches_added_from_the_log_merge_into_the_cell_at_every_level() {
        let v = view();
        let s = Slice::new(&v, 1, 0);
        let mut d = s.write();
        let g = r#"["/a"]"#;
        let (whole, added) = (Given::Whole, Given::Added);
        assert!(d.set_cell(
            &v,
            60_000,
            g,
            aggs(2, 10, 5.0, &["x", "y"]),
            whole,
            whole,
            None
        ));
        // Two flushes: one adds "z" (and "x" again), one no value at all.
        assert!(d.set_cell(
            &v,
            60_000,
            g,
            aggs(4, 12, 5.0, &["x", "z"]),
            whole,
            added,
            None
        ));
        assert!(d.set_cell(&v, 60_000, g, aggs(5, 13, 5.0, &[]), whole, added, None));
        for level in &d.levels {
            let cells: Vec<_> = level.cells.values().collect();
            assert_eq!(cells.len(), 1, "level {}", level.ms);
            let cell = &cells[0][&0];
            assert_eq!(cell[0], Agg::Count(5), "level {}", level.ms);
            assert_eq!(cell[3].value(), Some(3.0), "level {}", level.ms);
        }
    }

    #[test]
    fn quantiles_added_from_the_log_equal_the_sketches_read_whole() {
        let v = view();
        let (whole, added) = (Slice::new(&v, 1, 0), Slice::new(&v, 1, 0));
        let g = r#"["/a"]"#;
        // The values each of three flushes adds to a cell (bucket).
        let flushes: [&[(i64, &[f64])]; 3] = [
            &[(60_000, &[5.0, 5.0])],
            &[(60_000, &[4.0, 4.0, 4.0]), (120_000, &[9.0])],
            &[(120_000, &[2.0, 2.0, 2.0])],
        ];
        let cell = |values: &[f64]| {
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let mut a = aggs(values.len() as u64, values.len() as i64, lo, &["x"]);
            let mut q = tally_core::quantile::QuantileSketch::new();
            values.iter().for_each(|&x| q.add(x));
            a[4] = Agg::Quantiles(q);
            a
        };
        let mut held: HashMap<i64, Vec<f64>> = HashMap::new();
        for flush in flushes {
            let (mut w, mut a) = (whole.write(), added.write());
            for &(bucket, new) in flush {
                let values = held.entry(bucket).or_default();
                values.extend_from_slice(new);
                // Redis's sketch whole, and what this flush added to it.
                assert!(w.set_cell(
                    &v,
                    bucket,
                    g,
                    cell(values),
                    Given::Whole,
                    Given::Whole,
                    None
                ));
                let mut delta = cell(values);
                delta[4] = cell(new)[4].clone();
                assert!(a.set_cell(&v, bucket, g, delta, Given::Added, Given::Whole, None));
            }
        }
        let (w, a) = (whole.read(), added.read());
        for (x, y) in w.levels.iter().zip(&a.levels) {
            assert_eq!(x.cells, y.cells, "level {}", x.ms);
        }
        // And the sketches are the values': 2 × 5.0 and 3 × 4.0 in the first minute.
        let mut want = tally_core::quantile::QuantileSketch::new();
        [5.0, 5.0, 4.0, 4.0, 4.0].iter().for_each(|&x| want.add(x));
        assert_eq!(a.levels[0].cells[&60_000][&0][4], Agg::Quantiles(want));
    }

    #[test]
    fn a_rollup_across_groups_holds_its_parts_at_every_level() {
        let v = view();
        let (a, b, r) = (
            Slice::part(&v, 1, 0),
            Slice::part(&v, 1, 0),
            Slice::new(&v, 1, 0),
        );
        let g = r#"["/a"]"#;
        {
            let mut r = r.write();
            let (mut a, mut b) = (a.write(), b.write());
            assert!(a.set_cell(
                &v,
                60_000,
                g,
                aggs(2, 10, 5.0, &["x"]),
                Given::Whole,
                Given::Whole,
                Some(&mut r)
            ));
            assert!(b.set_cell(
                &v,
                60_000,
                g,
                aggs(1, -3, 7.0, &["y"]),
                Given::Whole,
                Given::Whole,
                Some(&mut r)
            ));
            // A part's cell grows, as Redis values do.
            assert!(a.set_cell(
                &v,
                60_000,
                g,
                aggs(5, 12, 4.0, &["x", "z"]),
                Given::Whole,
                Given::Whole,
                Some(&mut r)
            ));
            assert!(b.set_cell(
                &v,
                3_600_000,
                g,
                aggs(1, 1, 9.0, &["x"]),
                Given::Whole,
                Given::Whole,
                Some(&mut r)
            ));
        }
        // A part keeps its own level only.
        assert_eq!(a.read().levels.len(), 1);
        let r = r.read();
        let minute = &r.levels[0].cells[&60_000][&0];
        assert_eq!(minute[0], Agg::Count(6));
        assert_eq!(minute[1], Agg::Sum { int: 9, float: 0.0 });
        assert_eq!(minute[2], Agg::Min(Some(4.0)));
        assert_eq!(minute[3].value(), Some(3.0));
        let day = &r.levels[2].cells[&0][&0];
        assert_eq!(day[0], Agg::Count(7));
        assert_eq!(
            day[1],
            Agg::Sum {
                int: 10,
                float: 0.0
            }
        );
        assert_eq!(day[2], Agg::Min(Some(4.0)));
        assert_eq!(day[3].value(), Some(3.0));
        let mut want = tally_core::quantile::QuantileSketch::new();
        (0..5).for_each(|_| want.add(4.0));
        want.add(7.0);
        want.add(9.0);
        assert_eq!(day[4], Agg::Quantiles(want));
        // Built again from its parts, it is the same at every level.
        let again = Slice::new(&v, 1, 0);
        {
            let mut w = again.write();
            w.add_part(&v, &a.read());
            w.add_part(&v, &b.read());
        }
        let again = again.read();
        for (x, y) in r.levels.iter().zip(&again.levels) {
            assert_eq!(x.cells, y.cells, "level {}", x.ms);
        }
    }
}
