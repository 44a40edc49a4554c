//! [`Union`]: many sketches unioned at once, the way the serving layer
//! merges the sketches of an answer cell.

use std::fmt;

use super::estimate::{dense_count, estimate};
use super::{dense_entries, Hll, Repr, REGISTERS, SPARSE_MAX_REGS};

/// A union of many sketches at once: a dense scratch of registers and the
/// list of those set, so that adding a sparse sketch costs its registers and
/// counting costs the registers set, not 16,384. Once a dense sketch is
/// added the list is dropped and the union works on all registers (a
/// register-wise maximum the compiler vectorises). The serving layer unions
/// the sketches of each answer cell with one `Union`, cleared between cells.
#[derive(Clone)]
pub struct Union {
    regs: Box<[u8]>,
    set: Vec<u16>,
    /// Every register may be set: `set` is not kept.
    all: bool,
    /// Room for [`sort_indices`].
    scratch: Vec<u16>,
}

impl Default for Union {
    /// An empty union; its 16 KiB of registers are allocated by the first
    /// add, so that a query without a distinct measure never zeroes them.
    fn default() -> Self {
        Union {
            regs: Box::default(),
            set: Vec::new(),
            all: false,
            scratch: Vec::new(),
        }
    }
}

impl fmt::Debug for Union {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Union")
            .field("set", &self.set.len())
            .field("all", &self.all)
            .finish()
    }
}

impl Union {
    /// The registers, allocated on first use.
    fn allocate(&mut self) {
        if self.regs.is_empty() {
            self.regs = vec![0u8; REGISTERS].into_boxed_slice();
        }
    }

    /// Add a sketch to the union.
    pub fn add(&mut self, h: &Hll) {
        self.allocate();
        match &h.repr {
            Repr::Sparse(entries) => self.add_registers(entries),
            Repr::Dense(regs) => {
                self.all = true;
                self.set.clear();
                for (a, &b) in self.regs.iter_mut().zip(regs.iter()) {
                    *a = (*a).max(b);
                }
            }
        }
    }

    /// Add registers given as [`Hll::sparse_registers`] gives them.
    pub fn add_registers(&mut self, regs: &[u32]) {
        self.allocate();
        if self.all {
            for &e in regs {
                let r = &mut self.regs[(e >> 8) as usize];
                *r = (*r).max(e as u8);
            }
            return;
        }
        // The one hot loop of a distinct answer, without a branch on
        // whether the register was set: that depends on the data and was
        // mispredicted about as often as not. Each index is written past the
        // list's end and kept only when the register was 0.
        let mut n = self.set.len();
        self.set.resize(n + regs.len(), 0);
        for &e in regs {
            let index = (e >> 8) as usize;
            let r = &mut self.regs[index];
            self.set[n] = index as u16;
            n += usize::from(*r == 0);
            *r = (*r).max(e as u8);
        }
        self.set.truncate(n);
    }

    /// Whether nothing was added since the last clear.
    pub fn is_empty(&self) -> bool {
        if self.all {
            self.regs.iter().all(|&r| r == 0)
        } else {
            self.set.is_empty()
        }
    }

    /// The estimate `PFCOUNT` gives for the union.
    pub fn count(&self) -> u64 {
        if self.all {
            return dense_count(&self.regs);
        }
        let regs = &self.regs;
        estimate(&histogram_of(&self.set, |i| regs[i]))
    }

    /// Merge the union into `acc`.
    pub fn merge_into(&mut self, acc: &mut Hll) {
        if self.all {
            let regs = acc.make_dense();
            for (a, &b) in regs.iter_mut().zip(self.regs.iter()) {
                *a = (*a).max(b);
            }
            return;
        }
        let small = match &acc.repr {
            Repr::Sparse(e) => e.len() + self.set.len() <= SPARSE_MAX_REGS,
            Repr::Dense(_) => false,
        };
        if small {
            sort_indices(&mut self.set, &mut self.scratch);
            let entries: Vec<u32> = self
                .set
                .iter()
                .map(|&i| ((i as u32) << 8) | self.regs[i as usize] as u32)
                .collect();
            match &mut acc.repr {
                // A sketch kept per cell starts empty: the list is its own.
                Repr::Sparse(mine) if mine.is_empty() => *mine = entries,
                _ => acc.merge_registers(&entries),
            }
        } else {
            let regs = acc.make_dense();
            for &i in &self.set {
                let i = i as usize;
                regs[i] = regs[i].max(self.regs[i]);
            }
        }
    }

    /// Count the union, merge it into `acc` and empty it: what
    /// [`Union::count`], [`Union::merge_into`] and [`Union::clear`] give in
    /// turn, in one pass over the registers set when `acc` is dense (a
    /// group's running total soon is): each register is read once, not
    /// three times.
    pub fn drain_into(&mut self, acc: &mut Hll) -> u64 {
        if self.all || matches!(acc.repr, Repr::Sparse(_)) {
            let count = self.count();
            self.merge_into(acc);
            self.clear();
            return count;
        }
        let (regs, mine) = (acc.make_dense(), &mut self.regs);
        let histo = histogram_of(&self.set, |i| {
            let v = std::mem::take(&mut mine[i]);
            regs[i] = regs[i].max(v);
            v
        });
        self.set.clear();
        estimate(&histo)
    }

    /// Count the union and empty it: what [`Union::count`] and
    /// [`Union::clear`] give in turn, in one pass over the registers set
    /// (for a cell whose group total is made apart from its cells).
    pub fn drain(&mut self) -> u64 {
        if self.all {
            let count = self.count();
            self.clear();
            return count;
        }
        let regs = &mut self.regs;
        let histo = histogram_of(&self.set, |i| std::mem::take(&mut regs[i]));
        self.set.clear();
        estimate(&histo)
    }

    /// Merge the union into `acc`, hand its registers over
    /// (`(index << 8) | value`, in no particular order) and empty it: what
    /// [`Union::merge_into`] and [`Union::clear`] give in turn, with the
    /// registers read in between, in one pass over the registers set when
    /// `acc` is dense. A rolling window keeps each answer cell's registers
    /// this way ([`super::Sliding`] takes them unsorted).
    pub fn take_into(&mut self, acc: &mut Hll) -> Vec<u32> {
        if self.all || matches!(acc.repr, Repr::Sparse(_)) {
            self.merge_into(acc);
            let entries = if self.all {
                dense_entries(&self.regs)
            } else {
                (self.set.iter())
                    .map(|&i| ((i as u32) << 8) | self.regs[i as usize] as u32)
                    .collect()
            };
            self.clear();
            return entries;
        }
        let regs = acc.make_dense();
        let mine = &mut self.regs;
        let entries = (self.set.iter())
            .map(|&i| {
                let v = std::mem::take(&mut mine[i as usize]);
                let r = &mut regs[i as usize];
                *r = (*r).max(v);
                ((i as u32) << 8) | v as u32
            })
            .collect();
        self.set.clear();
        entries
    }

    /// Hand the union's registers over (`(index << 8) | value`, in no
    /// particular order) and empty it, in one pass over the registers set
    /// (for a rolling window's cell whose group total is made apart).
    pub fn take(&mut self) -> Vec<u32> {
        if self.all {
            let entries = dense_entries(&self.regs);
            self.clear();
            return entries;
        }
        let regs = &mut self.regs;
        let entries = (self.set.iter())
            .map(|&i| ((i as u32) << 8) | u32::from(std::mem::take(&mut regs[i as usize])))
            .collect();
        self.set.clear();
        entries
    }

    /// Empty the union (in time proportional to the registers set).
    pub fn clear(&mut self) {
        if self.all {
            self.regs.fill(0);
            self.all = false;
        } else {
            for &i in &self.set {
                self.regs[i as usize] = 0;
            }
        }
        self.set.clear();
    }
}

/// The histogram of the registers `set` lists (all of them set), their
/// values given by `value` (which may also take them), with the registers
/// not listed counted as 0. Four tables filled in turn and added up at the
/// end: most values are 1 to 3, and with one table each increment waited
/// on the one before it (a store and a load of the same count).
fn histogram_of(set: &[u16], mut value: impl FnMut(usize) -> u8) -> [u32; 64] {
    let mut tables = [[0u32; 64]; 4];
    let quads = set.chunks_exact(4);
    let rest = quads.remainder();
    for quad in quads {
        for (table, &i) in tables.iter_mut().zip(quad) {
            table[(value(i as usize) & 63) as usize] += 1;
        }
    }
    for &i in rest {
        tables[0][(value(i as usize) & 63) as usize] += 1;
    }
    let [mut histo, rest @ ..] = tables;
    for table in &rest {
        for (h, &n) in histo.iter_mut().zip(table) {
            *h += n;
        }
    }
    histo[0] += (REGISTERS - set.len()) as u32;
    histo
}

/// Sort register indices (below 2^14) in two counting passes of seven
/// bits each: a union's hundreds of indices sort in a few linear passes,
/// where a comparison sort mispredicted its way to a tenth of a distinct
/// answer (and passes of eight bits cleared and summed twice the counts).
fn sort_indices(set: &mut Vec<u16>, scratch: &mut Vec<u16>) {
    const _: () = assert!(REGISTERS <= 1 << 14);
    for shift in [0, 7] {
        let mut at = [0usize; 128];
        for &i in set.iter() {
            at[((i >> shift) & 0x7f) as usize] += 1;
        }
        let mut sum = 0;
        for a in at.iter_mut() {
            (*a, sum) = (sum, sum + *a);
        }
        scratch.clear();
        scratch.resize(set.len(), 0);
        for &i in set.iter() {
            let b = &mut at[((i >> shift) & 0x7f) as usize];
            scratch[*b] = i;
            *b += 1;
        }
        std::mem::swap(set, scratch);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn indices_sort_as_a_comparison_sort_does() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut scratch = Vec::new();
        for n in [0usize, 1, 2, 17, 360, 5_000] {
            let mut set: Vec<u16> = (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % (1 << 14)) as u16
                })
                .collect();
            let mut want = set.clone();
            want.sort_unstable();
            super::sort_indices(&mut set, &mut scratch);
            assert_eq!(set, want, "{n} indices");
        }
    }
}
