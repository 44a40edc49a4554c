//! The sketch against Redis's own bytes and estimates.

use super::*;

fn sketch(range: std::ops::Range<u64>) -> Hll {
    let mut h = Hll::new();
    for i in range {
        h.add(format!("user_{i}").as_bytes());
    }
    h
}

#[test]
fn unions_equal_adding_every_value_whatever_the_representations() {
    // Sparse with sparse (overlapping, and past the sparse limit when
    // merged), sparse into dense, dense into sparse, into empty.
    for (a, b) in [
        (0..300u64, 200..600u64),
        (0..10, 5..15),
        (0..700, 300..1_000),
        (0..50, 0..5_000),
        (0..5_000, 4_000..4_050),
        (0..0, 10..20),
        (10..20, 0..0),
    ] {
        let mut merged = sketch(a.clone());
        merged.merge(&sketch(b.clone()));
        let mut truth = sketch(a.clone());
        for i in b {
            truth.add(format!("user_{i}").as_bytes());
        }
        assert_eq!(merged.registers(), truth.registers());
        assert_eq!(merged.count(), truth.count());
    }
}

#[test]
fn a_union_nothing_was_added_to_counts_nothing_and_merges_nothing() {
    for base in [sketch(0..10), sketch(0..9_000)] {
        let mut a = base.clone();
        assert!(Union::default().is_empty());
        assert_eq!(Union::default().count(), 0);
        Union::default().merge_into(&mut a);
        assert_eq!(Union::default().drain_into(&mut a), 0);
        assert_eq!(Union::default().drain(), 0);
        assert_eq!(a.registers(), base.registers());
    }
}

#[test]
fn a_union_counts_and_merges_as_merging_the_sketches_does() {
    let mut u = Union::default();
    for parts in [
        vec![0..40u64, 30..90, 85..100],
        vec![0..3_000, 10..20],
        vec![10..20, 0..3_000, 2_000..6_000, 7_000..7_010],
        vec![0..500, 400..900],
        vec![],
    ] {
        u.clear();
        let mut merged = Hll::new();
        for p in &parts {
            let h = sketch(p.clone());
            u.add(&h);
            merged.merge(&h);
        }
        assert_eq!(u.count(), merged.count());
        assert_eq!(u.is_empty(), merged.is_empty());
        // Drained without an accumulator: the count, and the union left
        // empty (no register left set to hide its index from the next use).
        let mut counted = u.clone();
        assert_eq!(counted.drain(), merged.count());
        assert!(counted.is_empty());
        // Taken without an accumulator: the registers of the merge, and the
        // union left empty.
        let mut handed = u.clone();
        let mut own = handed.take();
        own.sort_unstable();
        assert_eq!(own, merged.entries());
        assert!(handed.is_empty());
        for p in &parts {
            counted.add(&sketch(p.clone()));
        }
        assert_eq!(counted.count(), merged.count());
        // Into a sparse and into a dense accumulator; drained, the same
        // registers and count, and the union left empty.
        for base in [Hll::new(), sketch(5_000..5_010), sketch(5_000..9_000)] {
            let mut a = base.clone();
            u.merge_into(&mut a);
            let mut b = base.clone();
            b.merge(&merged);
            assert_eq!(a.registers(), b.registers());
            // A sparse result lists its registers in index order, as merging does.
            assert_eq!(a.sparse_registers(), b.sparse_registers());
            // Taken: the accumulator as merged, the registers handed over
            // those of the sketches' merge, and the union left empty.
            let mut taken = u.clone();
            let mut e = base.clone();
            let mut own = taken.take_into(&mut e);
            assert_eq!(e.registers(), b.registers());
            own.sort_unstable();
            assert_eq!(own, merged.entries());
            assert!(taken.is_empty());
            taken.add(&sketch(0..1));
            assert_eq!(taken.count(), sketch(0..1).count());
            let mut drained = u.clone();
            let mut c = base;
            assert_eq!(drained.drain_into(&mut c), merged.count());
            assert_eq!(c.registers(), b.registers());
            assert!(drained.is_empty());
            // A register left set would hide its index from the next use.
            for p in &parts {
                drained.add(&sketch(p.clone()));
            }
            assert_eq!(drained.count(), merged.count());
        }
    }
}

#[test]
fn sparse_registers_merge_count_and_union_as_the_sketch_does() {
    let a = sketch(0..300);
    let b = sketch(250..400);
    let regs = b.sparse_registers().expect("sparse");
    assert_eq!(count_registers(regs), b.count());
    for mut into in [a.clone(), sketch(0..5_000)] {
        let mut by_sketch = into.clone();
        by_sketch.merge(&b);
        into.merge_registers(regs);
        assert_eq!(into.registers(), by_sketch.registers());
    }
    let mut u = Union::default();
    u.add_registers(regs);
    assert_eq!(u.count(), b.count());
    assert!(sketch(0..5_000).sparse_registers().is_none());
}

#[test]
fn empty_counts_zero() {
    assert_eq!(Hll::new().count(), 0);
    assert!(Hll::new().is_empty());
}

#[test]
fn estimates_within_two_percent_from_1e3_to_1e6() {
    let mut h = Hll::new();
    let mut n = 0u64;
    for target in [1_000u64, 10_000, 100_000, 1_000_000] {
        while n < target {
            h.add(format!("v{n}").as_bytes());
            n += 1;
        }
        let est = h.count() as f64;
        let err = (est - n as f64).abs() / n as f64;
        assert!(err < 0.02, "n={n} estimate={est} error={err}");
    }
}

#[test]
fn sparse_and_dense_round_trip_through_redis_encodings() {
    for n in [0u64, 1, 50, 2_000, 50_000] {
        let h = sketch(0..n);
        let dense = Hll::from_redis_bytes(&h.to_redis_dense()).unwrap();
        assert_eq!(dense.registers(), h.registers(), "dense n={n}");
        if let Some(sparse) = h.to_redis_sparse() {
            let back = Hll::from_redis_bytes(&sparse).unwrap();
            assert_eq!(back.registers(), h.registers(), "sparse n={n}");
        }
        assert_eq!(
            Hll::from_redis_bytes(&h.to_redis_bytes()).unwrap().count(),
            h.count()
        );
    }
}

#[test]
fn sparse_and_dense_sketches_encode_alike() {
    // The O(registers set) encoder of a sparse sketch against the walk over
    // all registers, on sketches with runs of equal neighbours and gaps.
    for (n, step) in [(0u64, 1u64), (1, 1), (40, 1), (300, 7), (700, 13)] {
        let mut h = Hll::new();
        for i in 0..n {
            h.add(&(i * step).to_le_bytes());
        }
        // Neighbouring registers of one value: a VAL run longer than 4.
        for r in 100..111u32 {
            h.set_max(r as usize, 3);
        }
        assert!(matches!(h.repr, Repr::Sparse(_)));
        let dense = Hll {
            repr: Repr::Dense(h.registers().into_boxed_slice()),
        };
        assert_eq!(h.to_redis_sparse(), dense.to_redis_sparse(), "n = {n}");
        let back = Hll::from_redis_bytes(&h.to_redis_bytes()).unwrap();
        assert_eq!(back.registers(), h.registers());
    }
    let mut big = Hll::new();
    big.set_max(5, 40); // over the sparse encoding's 32
    assert_eq!(big.to_redis_sparse(), None);
}

#[test]
fn registers_encode_to_what_redis_decodes_back() {
    // Runs longer than a VAL opcode, gaps of every ZERO/XZERO size, values
    // over the sparse limit, and sketches too big for the sparse encoding.
    let mut cases: Vec<Vec<(u32, u32)>> = vec![
        Vec::new(),
        vec![(0, 1)],
        vec![(16_383, 32)],
        vec![(5, 33)],
        vec![
            (0, 1),
            (1, 1),
            (2, 1),
            (3, 1),
            (4, 1),
            (5, 2),
            (70, 3),
            (16_383, 1),
        ],
    ];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for n in [10, 100, 700, 1500, 3000, 20_000] {
        let mut regs = std::collections::BTreeMap::new();
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            regs.insert((x % REGISTERS as u64) as u32, 1 + ((x >> 20) % 34) as u32);
        }
        cases.push(regs.into_iter().collect());
    }
    for pairs in cases {
        // Appended after what a column buffer already holds.
        let registers: Vec<u32> = pairs.iter().map(|&(i, v)| (i << 8) | v).collect();
        let mut column = b"before".to_vec();
        append_redis_bytes(&registers, &mut column);
        let (before, bytes) = column.split_at(6);
        assert_eq!(before, b"before");
        let mut truth = vec![0u8; REGISTERS];
        for &(i, v) in &pairs {
            truth[i as usize] = v as u8;
        }
        let sparse = pairs.iter().all(|&(_, v)| v <= 32) && bytes.len() <= SPARSE_MAX_BYTES;
        assert_eq!(
            bytes[4],
            if sparse { 1 } else { 0 },
            "{} registers",
            pairs.len()
        );
        let back = Hll::from_redis_bytes(bytes).unwrap();
        assert_eq!(back.registers(), truth, "{} registers", pairs.len());
        assert_eq!(back.to_redis_bytes(), bytes, "{} registers", pairs.len());
    }
}

#[test]
fn a_sparse_encoding_fits_the_buffer_it_starts_with() {
    // Registers far apart (an XZERO before each VAL), close together, at
    // both ends, and none: the buffer never grows past its first size.
    let spread: Vec<(usize, u8)> = (0..160).map(|i| (i * 100, 1 + (i % 32) as u8)).collect();
    let close: Vec<(usize, u8)> = (0..160).map(|i| (i * 3, 5)).collect();
    let ends = vec![(0, 1), (REGISTERS - 1, 32)];
    for regs in [spread, close, ends, Vec::new()] {
        let n = regs.len();
        let out = encoding::sparse_of(n, regs.into_iter()).unwrap();
        assert!(out.len() <= encoding::sparse_len_bound(n), "{n} registers");
        assert_eq!(
            out.capacity(),
            encoding::sparse_len_bound(n),
            "{n} registers"
        );
    }
}

#[test]
fn rejects_what_is_not_a_sketch() {
    assert_eq!(Hll::from_redis_bytes(b"hello"), Err(HllError::BadMagic));
    let mut d = Hll::new().to_redis_dense();
    d.pop();
    assert_eq!(
        Hll::from_redis_bytes(&d),
        Err(HllError::BadDenseLength(DENSE_LEN - 1))
    );
    let mut s = Hll::new().to_redis_sparse().unwrap();
    s.pop();
    assert_eq!(Hll::from_redis_bytes(&s), Err(HllError::BadSparse));
    let mut e = Hll::new().to_redis_dense();
    e[4] = 7;
    assert_eq!(Hll::from_redis_bytes(&e), Err(HllError::BadEncoding(7)));
}

#[test]
fn the_estimate_equals_redis_full_loop_over_every_rank() {
    // Redis's hllCount walks every rank from Q down; the estimate starts
    // at the highest rank set. Same float operations, same result, for
    // histograms from empty to full and with the top rank (Q + 1) set.
    fn full_loop(histo: &[u32; 64]) -> u64 {
        let m = REGISTERS as f64;
        let q = Q as usize;
        let mut z = m * super::estimate::tau((m - histo[q + 1] as f64) / m);
        for j in (1..=q).rev() {
            z += histo[j] as f64;
            z *= 0.5;
        }
        z += m * super::estimate::sigma(histo[0] as f64 / m);
        (0.721_347_520_444_481_7 * m * m / z).round() as u64
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for case in 0..2_000 {
        let mut histo = [0u32; 64];
        // From a few registers set to all of them, ranks up to Q + 1.
        let set = [1, 30, 700, 5_000, REGISTERS][case % 5];
        let top = [3, 12, 25, 51, 52][(case / 5) % 5];
        for _ in 0..set {
            histo[1 + (next() % (top as u64 - 1)) as usize] += 1;
        }
        histo[0] = (REGISTERS - set) as u32;
        assert_eq!(
            super::estimate::estimate(&histo),
            full_loop(&histo),
            "{histo:?}"
        );
    }
    assert_eq!(
        super::estimate::estimate(&{
            let mut h = [0u32; 64];
            h[0] = REGISTERS as u32;
            h
        }),
        0
    );
}

/// A sketch of the given (register, value) pairs, sparse or dense: few
/// registers, so that a window's sketches collide and tie.
fn of_pairs(pairs: &[(u16, u8)], dense: bool) -> Hll {
    let mut h = Hll::new();
    for &(i, v) in pairs {
        h.set_max(i as usize, v);
    }
    if dense {
        h.make_dense();
    }
    h
}

proptest::proptest! {
    /// Sketches enter and leave in window order, in any rhythm (a window
    /// that grows, slides, empties, jumps a gap): after every move the
    /// sliding union holds the registers, and gives the estimate, of
    /// merging the sketches inside.
    #[test]
    fn a_sliding_union_is_the_union_of_the_sketches_inside(
        sketches in proptest::collection::vec(
            (
                proptest::collection::vec(
                    (
                        proptest::prop_oneof![0u16..40, 0u16..REGISTERS as u16],
                        proptest::prop_oneof![1u8..6, 1u8..52],
                    ),
                    0..40,
                ),
                proptest::bool::weighted(0.2),
            ),
            1..20,
        ),
        moves in proptest::collection::vec(proptest::bool::weighted(0.6), 0..50),
    ) {
        let sketches: Vec<Hll> = sketches.iter().map(|(p, d)| of_pairs(p, *d)).collect();
        // In no particular order: the sliding union never looks one up.
        let registers: Vec<Vec<u32>> = sketches
            .iter()
            .map(|h| h.entries().into_iter().rev().collect())
            .collect();
        let mut s = Sliding::default();
        let (mut lo, mut hi) = (0, 0);
        // Then everything leaves.
        let drain = std::iter::repeat_n(false, sketches.len());
        for enter in moves.into_iter().chain(drain) {
            if enter && hi < sketches.len() {
                s.enter(&registers[hi]);
                hi += 1;
            } else if !enter && lo < hi {
                s.leave(&registers[lo]);
                lo += 1;
            }
            let mut merged = Hll::new();
            for h in &sketches[lo..hi] {
                merged.merge(h);
            }
            proptest::prop_assert_eq!(s.registers(), merged.registers());
            proptest::prop_assert_eq!(s.count(), merged.count());
            proptest::prop_assert_eq!(s.is_empty(), merged.is_empty());
        }
        proptest::prop_assert!(s.is_empty());
    }
}
