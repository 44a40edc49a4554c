//! The speed layer's side of `dedup = "event_id"`: a bounded window of the
//! (event_id, event-time day) keys a process has counted, per dedup view.
//!
//! A key is a 128-bit hash (xxh3, seeded per process and per day) of the
//! event_id: one pass over the id's bytes per event, nothing allocated. Each
//! dedup view keeps at most `speed.dedup_window` keys, the oldest evicted
//! first (FIFO). An event of a dedup view whose key is in the window is a
//! copy already counted and is left out of that view (views without dedup
//! count it as ever).
//!
//! Effectively-once is kept: each key remembers the coordinates (topic,
//! partition, offset) of the record that was counted. The same record read
//! again (a replay after a fenced chunk, a re-seek, a Redis that lost its
//! data) is that record, not a retry: it is counted again, and the offset
//! fence decides, as for any record. So the window never drops a record
//! that was not already a duplicate.
//!
//! What it cannot see, the batch removes: a retry whose first copy left the
//! window, was counted by another speed process (other partitions), or
//! before this process restarted (the window starts empty) is counted by
//! the speed layer until the batch covers its epoch; answers that include
//! speed slices of a dedup view say so (`speed_may_hold_duplicates`).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::xxh3_128_with_seed;

/// Where a counted record was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Coord {
    /// Index of the topic among the topics the folder has seen.
    pub(crate) topic: u32,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// The keys are hashes already: their low 64 bits index the table.
#[derive(Debug, Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// The keys one dedup view counted, oldest first out.
#[derive(Debug)]
pub(crate) struct Window {
    counted: HashMap<u128, Coord, BuildHasherDefault<KeyHasher>>,
    order: VecDeque<u128>,
    cap: usize,
}

impl Window {
    pub(crate) fn new(cap: usize) -> Self {
        Window {
            counted: HashMap::default(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Whether the record at `at` with key `key` is to be counted: its key
    /// is new (it is remembered), or it is the very record counted under it.
    pub(crate) fn count(&mut self, key: u128, at: Coord) -> bool {
        match self.counted.entry(key) {
            Entry::Occupied(e) => *e.get() == at,
            Entry::Vacant(e) => {
                e.insert(at);
                self.order.push_back(key);
                if self.order.len() > self.cap {
                    if let Some(old) = self.order.pop_front() {
                        self.counted.remove(&old);
                    }
                }
                true
            }
        }
    }

    /// Keys held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
    }
}

/// Hashes (event_id, day) into window keys, with a seed drawn per process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keyer {
    seed: u64,
}

impl Keyer {
    pub(crate) fn new() -> Self {
        // foldhash's per-process random state, as a seed.
        Keyer {
            seed: foldhash::fast::RandomState::default().hash_one(0x7a11_u64),
        }
    }

    /// The key of `event_id` on event-time day `day`.
    pub(crate) fn key(&self, event_id: &str, day: i64) -> u128 {
        let seed = self.seed ^ (day as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        xxh3_128_with_seed(event_id.as_bytes(), seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> Coord {
        Coord {
            topic: 0,
            partition: 0,
            offset,
        }
    }

    #[test]
    fn a_retry_is_left_out_and_a_replay_is_not() {
        let k = Keyer::new();
        let mut w = Window::new(10);
        let (a, b) = (k.key("evt_1", 19_723), k.key("evt_2", 19_723));
        assert!(w.count(a, at(1)));
        assert!(w.count(b, at(2)));
        assert!(!w.count(a, at(7)), "a retry at another offset is a duplicate");
        assert!(w.count(a, at(1)), "the counted record read again counts again");
        assert_ne!(k.key("evt_1", 19_723), k.key("evt_1", 19_724), "days are apart");
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn the_window_keeps_the_newest_keys() {
        let k = Keyer::new();
        let mut w = Window::new(3);
        for i in 0..5 {
            assert!(w.count(k.key(&format!("e{i}"), 0), at(i)));
        }
        assert_eq!(w.len(), 3);
        // e0 and e1 were evicted: their retries count; e4's does not.
        assert!(w.count(k.key("e0", 0), at(100)));
        assert!(!w.count(k.key("e4", 0), at(101)));
    }
}
