//! [`Sliding`]: the union of a window of sketches that slides, the way a
//! rolling window (`window=3h`) moves over a group's cells: sketches enter
//! at one end, leave at the other in the order they entered, and the union's
//! estimate is read between moves.
//!
//! A HyperLogLog union cannot take a sketch back out, so a window that
//! re-unions its sketches for every point pays all the window's registers at
//! every point, and a count over all of them again. Here each register keeps
//! its maximum over the window with two counts: how many sketches in the
//! window set it, and how many of those hold it at the maximum; a histogram
//! of the maxima follows every change. A move costs the moving sketch's
//! registers and a count costs the histogram's 64 steps. Only when the one
//! sketch holding a register's maximum leaves while another sketch still
//! sets that register is the register looked up in the sketches left.
//!
//! Guarantee: after any moves in window order, [`Sliding::count`] equals the
//! `PFCOUNT` of the union of the sketches inside, as long as the window never
//! holds more than [`Sliding::MAX_SKETCHES`] sketches.

use std::fmt;

use super::estimate::estimate;
use super::{Hll, Repr, REGISTERS};

/// Bits of a slot's counts.
const COUNT_BITS: u32 = 12;
const COUNT_MASK: u32 = (1 << COUNT_BITS) - 1;

/// A sliding union of sketches (see the module docs).
#[derive(Clone)]
pub struct Sliding {
    /// Per register: the window's maximum (bits 0..8), how many sketches
    /// in the window hold it at that maximum (bits 8..20) and how many set
    /// it at all (bits 20..32). One word a register: one load and one store
    /// a move.
    slots: Box<[u32]>,
    /// Registers per maximum (entry 0 unused: see `set`), in four lanes by
    /// register index, summed when counting: most registers hold 1 or 2, and
    /// one histogram would make each move wait on the last one's update.
    lanes: [[u32; 64]; 4],
    /// Registers some sketch in the window sets.
    set: u32,
}

impl Default for Sliding {
    fn default() -> Self {
        Sliding {
            slots: vec![0u32; REGISTERS].into_boxed_slice(),
            lanes: [[0; 64]; 4],
            set: 0,
        }
    }
}

impl fmt::Debug for Sliding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sliding").field("set", &self.set).finish()
    }
}

impl Sliding {
    /// The most sketches a window may hold: a slot's counts have 12 bits.
    pub const MAX_SKETCHES: usize = COUNT_MASK as usize;

    /// A sketch enters the window.
    pub fn enter(&mut self, h: &Hll) {
        match &h.repr {
            Repr::Sparse(entries) => {
                for &e in entries {
                    self.enter_one((e >> 8) as usize, e as u8);
                }
            }
            Repr::Dense(regs) => {
                for (i, &v) in regs.iter().enumerate() {
                    if v != 0 {
                        self.enter_one(i, v);
                    }
                }
            }
        }
    }

    /// The oldest sketch in the window, `h`, leaves; `rest` are the sketches
    /// still inside (where a register whose maximum `h` alone held is looked
    /// up again).
    pub fn leave<'a, I>(&mut self, h: &Hll, rest: I)
    where
        I: Iterator<Item = &'a Hll> + Clone,
    {
        match &h.repr {
            Repr::Sparse(entries) => {
                for &e in entries {
                    self.leave_one((e >> 8) as usize, e as u8, &rest);
                }
            }
            Repr::Dense(regs) => {
                for (i, &v) in regs.iter().enumerate() {
                    if v != 0 {
                        self.leave_one(i, v, &rest);
                    }
                }
            }
        }
    }

    /// The estimate `PFCOUNT` gives for the union of the sketches inside.
    pub fn count(&self) -> u64 {
        let mut histo = [0u32; 64];
        for (v, total) in histo.iter_mut().enumerate() {
            *total = self.lanes.iter().map(|l| l[v]).sum();
        }
        histo[0] = REGISTERS as u32 - self.set;
        estimate(&histo)
    }

    /// Whether no sketch inside sets a register.
    pub fn is_empty(&self) -> bool {
        self.set == 0
    }

    /// The union's registers, one byte each (for tests).
    #[cfg(test)]
    pub(super) fn registers(&self) -> Vec<u8> {
        self.slots.iter().map(|&s| unpack(s).0).collect()
    }

    #[inline(always)]
    fn enter_one(&mut self, i: usize, v: u8) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let lane = &mut self.lanes[i & 3];
        let (top, at, any) = unpack(*slot);
        *slot = if v > top {
            if top > 0 {
                lane[top as usize & 63] -= 1;
            } else {
                self.set += 1;
            }
            lane[v as usize & 63] += 1;
            pack(v, 1, any + 1)
        } else if v == top {
            pack(top, at + 1, any + 1)
        } else {
            pack(top, at, any + 1)
        };
    }

    #[inline(always)]
    fn leave_one<'a, I>(&mut self, i: usize, v: u8, rest: &I)
    where
        I: Iterator<Item = &'a Hll> + Clone,
    {
        let Some(&slot) = self.slots.get(i) else {
            return;
        };
        let (top, at, any) = unpack(slot);
        debug_assert!(any > 0 && v <= top, "a sketch left that never entered");
        let any = any.saturating_sub(1);
        let next = if any == 0 {
            self.lanes[i & 3][top as usize & 63] -= 1;
            self.set -= 1;
            0
        } else if v < top {
            pack(top, at, any)
        } else if at > 1 {
            pack(top, at - 1, any)
        } else {
            self.new_top(i, top, any, rest.clone())
        };
        self.slots[i] = next;
    }

    /// The one sketch at register `i`'s maximum `top` left while `any`
    /// others still set it: the new maximum, and who holds it, are among
    /// `rest`.
    #[cold]
    #[inline(never)]
    fn new_top<'a>(
        &mut self,
        i: usize,
        top: u8,
        any: u32,
        rest: impl Iterator<Item = &'a Hll>,
    ) -> u32 {
        let (mut new, mut holders) = (0u8, 0u32);
        for r in rest.map(|k| k.register(i)) {
            if r > new {
                (new, holders) = (r, 1);
            } else if r == new && r > 0 {
                holders += 1;
            }
        }
        debug_assert!(new > 0, "a register set in the window is in no sketch left");
        let lane = &mut self.lanes[i & 3];
        lane[top as usize & 63] -= 1;
        lane[new as usize & 63] += 1;
        pack(new, holders, any)
    }
}

fn unpack(slot: u32) -> (u8, u32, u32) {
    (
        slot as u8,
        (slot >> 8) & COUNT_MASK,
        (slot >> (8 + COUNT_BITS)) & COUNT_MASK,
    )
}

fn pack(top: u8, at: u32, any: u32) -> u32 {
    debug_assert!(at <= COUNT_MASK && any <= COUNT_MASK);
    top as u32 | (at << 8) | (any << (8 + COUNT_BITS))
}
