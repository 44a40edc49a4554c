//! [`Sliding`]: the union of a window of sketches that slides, the way a
//! rolling window (`window=3h`) moves over a group's cells: sketches enter
//! at one end, leave at the other in the order they entered, and the union's
//! estimate is read between moves.
//!
//! A HyperLogLog union cannot take a sketch back out, so a window that
//! re-unions its sketches for every point pays all the window's registers at
//! every point, and a count over all of them again. Here each register keeps
//! the textbook sliding-window maximum: the values that may still become its
//! maximum, newest last, each with the sketch it came from. A value leaves
//! the list when a newer one at least as large enters (it can never be the
//! maximum again), or when its sketch leaves the window (it is then the
//! oldest). A histogram of the maxima follows every change. A move costs
//! the moving sketch's registers, in any order, and a count the histogram's
//! 64 steps; nothing is looked up in the sketches inside, so they need not
//! be sorted.
//!
//! Guarantee: after any moves in window order, [`Sliding::count`] equals the
//! `PFCOUNT` of the union of the sketches inside, as long as the window never
//! holds more than [`Sliding::MAX_SKETCHES`] sketches and a sketch lists each
//! register once.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use super::estimate::estimate;
use super::REGISTERS;

/// Bits of a sketch's number in a list: numbers of the sketches inside
/// differ modulo `1 << SEQ_BITS`.
const SEQ_BITS: u32 = 12;
const SEQ_MASK: u32 = (1 << SEQ_BITS) - 1;
/// A list entry: the sketch's number, then the value (6 bits).
const ENTRY_BITS: u32 = SEQ_BITS + 6;
const ENTRY_MASK: u64 = (1 << ENTRY_BITS) - 1;
/// Entries a slot holds; a longer list (values falling step by step over
/// four sketches or more) moves to `spilled`.
const INLINE: u64 = 3;
/// Slot bits 0..2: the list's length; bit 2: the list is in `spilled`;
/// entries from bit 8, the oldest (the maximum) first.
const LEN_MASK: u64 = 3;
const SPILLED: u64 = 4;
const FIRST: u32 = 8;

/// A sliding union of sketches (see the module docs).
#[derive(Clone)]
pub struct Sliding {
    /// Per register, its list of candidate maxima (one word: one load and
    /// one store a move).
    slots: Box<[u64]>,
    /// The lists longer than a slot holds, by register.
    spilled: HashMap<u32, VecDeque<(u32, u8)>>,
    /// Registers per maximum, in four lanes by a move's position in its
    /// sketch, summed (wrapping) when counting: most registers hold 1 or 2,
    /// and one histogram would make each move wait on the last one's
    /// update. A register's maximum may enter one lane and leave another:
    /// a lane's count wraps, the sum does not. Entry 0 takes the moves from
    /// and to "unset", so that a move never branches on them.
    lanes: [[u32; 64]; 4],
    /// The numbers of the next sketch to enter and of the oldest inside.
    next: u32,
    oldest: u32,
}

impl Default for Sliding {
    fn default() -> Self {
        Sliding {
            slots: vec![0u64; REGISTERS].into_boxed_slice(),
            spilled: HashMap::new(),
            lanes: [[0; 64]; 4],
            next: 0,
            oldest: 0,
        }
    }
}

impl fmt::Debug for Sliding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sliding").field("set", &self.set()).finish()
    }
}

impl Sliding {
    /// The most sketches a window may hold: their numbers must differ in
    /// a list entry's bits.
    pub const MAX_SKETCHES: usize = SEQ_MASK as usize;

    /// A sketch enters the window, given as its non-zero registers
    /// `(index << 8) | value` ([`super::Hll::sparse_registers`]'s layout), in
    /// any order, each register once.
    pub fn enter(&mut self, registers: &[u32]) {
        let seq = self.next & SEQ_MASK;
        self.next = self.next.wrapping_add(1);
        for (k, &e) in registers.iter().enumerate() {
            self.enter_one(k, (e >> 8) as usize, e as u8 & 63, seq);
        }
    }

    /// The oldest sketch in the window leaves, given as it entered.
    pub fn leave(&mut self, registers: &[u32]) {
        let seq = self.oldest & SEQ_MASK;
        self.oldest = self.oldest.wrapping_add(1);
        for (k, &e) in registers.iter().enumerate() {
            self.leave_one(k, (e >> 8) as usize, seq);
        }
    }

    /// The estimate `PFCOUNT` gives for the union of the sketches inside.
    pub fn count(&self) -> u64 {
        let mut histo = self.histogram();
        histo[0] = REGISTERS as u32 - histo.iter().sum::<u32>();
        estimate(&histo)
    }

    /// Whether no sketch inside sets a register.
    pub fn is_empty(&self) -> bool {
        self.set() == 0
    }

    /// Registers per maximum, from 1 (entry 0 left 0).
    fn histogram(&self) -> [u32; 64] {
        let mut histo = [0u32; 64];
        for (v, total) in histo.iter_mut().enumerate().skip(1) {
            *total = (self.lanes.iter()).fold(0u32, |sum, lane| sum.wrapping_add(lane[v]));
        }
        histo
    }

    /// Registers some sketch in the window sets.
    fn set(&self) -> u32 {
        self.histogram().iter().sum()
    }

    /// The union's registers, one byte each (for tests).
    #[cfg(test)]
    pub(super) fn registers(&self) -> Vec<u8> {
        (0..REGISTERS).map(|i| self.top(i)).collect()
    }

    /// Register `i`'s maximum over the window (0: unset).
    #[cfg(test)]
    fn top(&self, i: usize) -> u8 {
        let slot = self.slots[i];
        if slot & SPILLED != 0 {
            return self.spilled[&(i as u32)].front().map_or(0, |e| e.1);
        }
        if slot & LEN_MASK == 0 {
            0
        } else {
            value(slot, 0)
        }
    }

    /// A register's maximum went from `old` to `new` (0: unset), the
    /// move at position `k` of its sketch.
    #[inline(always)]
    fn moved(&mut self, k: usize, old: u8, new: u8) {
        let lane = &mut self.lanes[k & 3];
        lane[old as usize & 63] = lane[old as usize & 63].wrapping_sub(1);
        lane[new as usize & 63] = lane[new as usize & 63].wrapping_add(1);
    }

    #[inline(always)]
    fn enter_one(&mut self, k: usize, i: usize, v: u8, seq: u32) {
        let Some(&slot) = self.slots.get(i) else {
            return;
        };
        if v == 0 {
            return;
        }
        if slot & SPILLED != 0 {
            return self.enter_spilled(k, i, v, seq);
        }
        let len = slot & LEN_MASK;
        // Values not above the new one can never be the maximum again.
        let mut keep = len;
        while keep > 0 && value(slot, keep - 1) <= v {
            keep -= 1;
        }
        if keep == INLINE {
            // A fourth candidate: the list moves out of the slot.
            let list = (0..len).map(|k| (seq_of(slot, k), value(slot, k)));
            let mut list: VecDeque<(u32, u8)> = list.collect();
            list.push_back((seq, v));
            self.spilled.insert(i as u32, list);
            self.slots[i] = SPILLED;
            return;
        }
        let kept = slot & ((1u64 << (FIRST as u64 + ENTRY_BITS as u64 * keep)) - 1) & !LEN_MASK;
        self.slots[i] = kept | entry(keep, seq, v) | (keep + 1);
        if keep == 0 {
            let old = if len > 0 { value(slot, 0) } else { 0 };
            self.moved(k, old, v);
        }
    }

    #[inline(always)]
    fn leave_one(&mut self, k: usize, i: usize, seq: u32) {
        let Some(&slot) = self.slots.get(i) else {
            return;
        };
        if slot & SPILLED != 0 {
            return self.leave_spilled(k, i, seq);
        }
        let len = slot & LEN_MASK;
        // Its value left the list already when a newer one at least as
        // large entered; else it is the oldest entry.
        if len == 0 || seq_of(slot, 0) != seq {
            return;
        }
        let old = value(slot, 0);
        let rest = (slot >> ENTRY_BITS) & !((1u64 << FIRST) - 1);
        self.slots[i] = rest | (len - 1);
        let new = if len > 1 { value(slot, 1) } else { 0 };
        self.moved(k, old, new);
    }

    #[cold]
    #[inline(never)]
    fn enter_spilled(&mut self, k: usize, i: usize, v: u8, seq: u32) {
        let Some(list) = self.spilled.get_mut(&(i as u32)) else {
            return;
        };
        let old = list.front().map_or(0, |e| e.1);
        while list.back().is_some_and(|e| e.1 <= v) {
            list.pop_back();
        }
        list.push_back((seq, v));
        let new = list.front().map_or(0, |e| e.1);
        if new != old {
            self.moved(k, old, new);
        }
    }

    #[cold]
    #[inline(never)]
    fn leave_spilled(&mut self, k: usize, i: usize, seq: u32) {
        let Some(list) = self.spilled.get_mut(&(i as u32)) else {
            return;
        };
        let Some(&(front, old)) = list.front() else {
            return;
        };
        if front != seq {
            return;
        }
        list.pop_front();
        let new = list.front().map_or(0, |e| e.1);
        if list.is_empty() {
            self.spilled.remove(&(i as u32));
            self.slots[i] = 0;
        }
        self.moved(k, old, new);
    }
}

/// List entry `k` of a slot holding sketch `seq`'s value `v`.
fn entry(k: u64, seq: u32, v: u8) -> u64 {
    (((v as u64) << SEQ_BITS) | seq as u64) << (FIRST as u64 + ENTRY_BITS as u64 * k)
}

fn raw(slot: u64, k: u64) -> u64 {
    (slot >> (FIRST as u64 + ENTRY_BITS as u64 * k)) & ENTRY_MASK
}

fn seq_of(slot: u64, k: u64) -> u32 {
    raw(slot, k) as u32 & SEQ_MASK
}

fn value(slot: u64, k: u64) -> u8 {
    (raw(slot, k) >> SEQ_BITS) as u8
}
