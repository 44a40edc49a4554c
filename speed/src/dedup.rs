//! The speed layer's side of `dedup = "event_id"`: a bounded window of the
//! (event_id, event-time day) keys a process has counted, per dedup view.
//!
//! A key is a 128-bit hash (xxh3, seeded per process and per day) of the
//! event_id: one pass over the id's bytes per event, nothing allocated. One
//! window serves every dedup view. It is two open-addressing tables of
//! generations: new keys go into the current one; when it holds half of
//! `speed.dedup_window` keys, the older table is emptied and becomes the
//! current one. So the window holds the last `dedup_window / 2` to
//! `dedup_window` keys, and a new key costs two probes (one cache line
//! each, keys inline), nothing freed one by one: a window larger than the
//! caches is bound by memory latency, and this is its fewest lines; the
//! consume loop asks for a key's lines ([`Window::prefetch`]) a few records
//! before it counts the key, so a batch's misses overlap. Each key
//! keeps the place of the record first counted under it and the dedup views
//! that counted it (a bit each, the first 16 dedup views; a view past those
//! has no bit and counts every copy). An event of a dedup view whose key a
//! record at another place holds, with the view's bit set, is a copy
//! already counted and is left out of that view (views without dedup count
//! it as ever).

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

use std::hash::BuildHasher;

use xxhash_rust::xxh3::xxh3_128_with_seed;

/// Where a counted record was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place {
    /// Index of the topic among the topics the folder has seen.
    pub(crate) topic: u16,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// A key's entry: where its first counted record is, and which dedup views
/// counted it (16 bytes).
#[derive(Debug, Clone, Copy)]
struct Entry16 {
    topic: u16,
    views: u16,
    partition: i32,
    offset: i64,
}

impl Entry16 {
    fn at(&self, p: Place) -> bool {
        self.offset == p.offset && self.partition == p.partition && self.topic == p.topic
    }
}

/// One generation: linear probing over a power-of-two array, at most half
/// full; key 0 marks an empty slot.
#[derive(Debug)]
struct Table {
    slots: Vec<(u128, Entry16)>,
    len: usize,
}

const EMPTY: (u128, Entry16) = (
    0,
    Entry16 {
        topic: 0,
        views: 0,
        partition: 0,
        offset: 0,
    },
);

impl Table {
    fn new(keys: usize) -> Table {
        Table {
            slots: vec![EMPTY; (keys * 2).next_power_of_two()],
            len: 0,
        }
    }

    /// The slot of `key`: where it is (true) or where it would go (false).
    fn find(&self, key: u128) -> (usize, bool) {
        let mask = self.slots.len() - 1;
        let mut i = (key as usize) & mask;
        loop {
            match self.slots[i].0 {
                0 => return (i, false),
                k if k == key => return (i, true),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Start loading the cache line of `key`'s home slot.
    fn prefetch(&self, key: u128) {
        let slot = &self.slots[(key as usize) & (self.slots.len() - 1)];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint; it reads nothing and cannot fault,
        // and the pointer is to a live slot anyway.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>((slot as *const (u128, Entry16)).cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    fn clear(&mut self) {
        self.slots.fill(EMPTY);
        self.len = 0;
    }
}

/// The keys the dedup views counted, in two generations.
#[derive(Debug)]
pub(crate) struct Window {
    current: Table,
    previous: Table,
    /// Keys per generation.
    half: usize,
}

impl Window {
    /// A window of `cap` keys (the last `cap / 2` to `cap`).
    pub(crate) fn new(cap: usize) -> Self {
        let half = (cap / 2).max(1);
        Window {
            current: Table::new(half),
            previous: Table::new(half),
            half,
        }
    }

    /// Ask the memory for `key`'s slots in both generations, ahead of
    /// [`Window::count`] (a hint: nothing is read or changed).
    pub(crate) fn prefetch(&self, key: u128) {
        let key = key.max(1);
        self.current.prefetch(key);
        self.previous.prefetch(key);
    }

    /// Whether the record at `at` with key `key` counts in the dedup view
    /// of bit `bit` (`None`: a view past the first 16, which counts every
    /// copy): its key is new (it is remembered), it is the very record
    /// remembered under it (a replay, or another view's first copy), or
    /// this view never counted the key (a copy its filter took and the
    /// first did not: counted, not remembered, so a replay of it is never
    /// taken for a copy).
    pub(crate) fn count(&mut self, key: u128, at: Place, bit: Option<u16>) -> bool {
        let bit = bit.unwrap_or(0);
        let key = key.max(1); // 0 marks an empty slot
        let (slot, found) = self.current.find(key);
        let kept = if found {
            Some(&mut self.current.slots[slot].1)
        } else {
            match self.previous.find(key) {
                (i, true) => Some(&mut self.previous.slots[i].1),
                _ => None,
            }
        };
        if let Some(kept) = kept {
            return if kept.at(at) {
                kept.views |= bit;
                true
            } else {
                kept.views & bit == 0
            };
        }
        let entry = Entry16 {
            topic: at.topic,
            views: bit,
            partition: at.partition,
            offset: at.offset,
        };
        if self.current.len >= self.half {
            // A new generation: the oldest keys go.
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
            let (slot, _) = self.current.find(key);
            self.current.slots[slot] = (key, entry);
        } else {
            self.current.slots[slot] = (key, entry);
        }
        self.current.len += 1;
        true
    }

    /// Keys held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len + self.previous.len
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

    const V: Option<u16> = Some(1);

    fn at(offset: i64) -> Place {
        Place {
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
        assert!(w.count(a, at(1), V));
        assert!(w.count(b, at(2), V));
        assert!(
            !w.count(a, at(7), V),
            "a retry at another offset is a duplicate"
        );
        assert!(
            w.count(a, at(1), V),
            "the counted record read again counts again"
        );
        assert_ne!(
            k.key("evt_1", 19_723),
            k.key("evt_1", 19_724),
            "days are apart"
        );
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn views_count_apart() {
        let k = Keyer::new();
        let mut w = Window::new(10);
        let (one, two) = (Some(1), Some(2));
        let key = k.key("evt", 1);
        // The first copy only view one takes; a copy both take.
        assert!(w.count(key, at(1), one));
        assert!(w.count(key, at(2), two), "view two never counted it");
        assert!(!w.count(key, at(2), one), "view one did");
        assert!(
            w.count(key, at(2), two),
            "not remembered for two: counted again"
        );
        // A record both take: the second view's bit joins the first's.
        let key = k.key("evt2", 1);
        assert!(w.count(key, at(3), one) && w.count(key, at(3), two));
        assert!(!w.count(key, at(4), one) && !w.count(key, at(4), two));
        // A view past the first 16 counts every copy.
        assert!(w.count(key, at(5), None));
    }

    #[test]
    fn the_window_keeps_the_newest_keys() {
        let k = Keyer::new();
        let mut w = Window::new(6);
        for i in 0..8 {
            assert!(w.count(k.key(&format!("e{i}"), 0), at(i), V));
        }
        // Two generations of 3: e6, e7 and e3, e4, e5 are held.
        assert_eq!(w.len(), 5);
        for i in 3..8 {
            assert!(!w.count(k.key(&format!("e{i}"), 0), at(100 + i), V), "e{i}");
        }
        // e0 to e2 were evicted: their retries count.
        for i in 0..3 {
            assert!(w.count(k.key(&format!("e{i}"), 0), at(200 + i), V), "e{i}");
        }
    }
}
