//! The quantile sketch against exact quantiles and its own monoid laws.

use super::*;
use proptest::prelude::*;

fn exact(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

fn sketch(xs: &[f64]) -> QuantileSketch {
    let mut s = QuantileSketch::new();
    for &x in xs {
        s.add(x);
    }
    s
}

/// `xs` split at `a` and `b` (clamped) into three sketches, merged in
/// either order: the sketch of the whole; with the middle part taken away
/// again: the sketch of the rest. Returns the merged whole.
fn merges_and_subtracts_exactly(
    xs: &[f64],
    a: usize,
    b: usize,
) -> Result<QuantileSketch, TestCaseError> {
    let (a, b) = (a.min(xs.len()), b.min(xs.len()));
    let (a, b) = (a.min(b), a.max(b));
    let (p1, p2, p3) = (sketch(&xs[..a]), sketch(&xs[a..b]), sketch(&xs[b..]));
    let mut fwd = p1.clone();
    fwd.merge(&p2);
    fwd.merge(&p3);
    let mut back = p3.clone();
    back.merge(&p2);
    back.merge(&p1);
    let whole = sketch(xs);
    prop_assert_eq!(&fwd, &whole);
    prop_assert_eq!(&back, &whole);
    back.subtract(&p2);
    let mut rest = xs[..a].to_vec();
    rest.extend_from_slice(&xs[b..]);
    prop_assert_eq!(back, sketch(&rest));
    Ok(fwd)
}

fn within_alpha(got: f64, want: f64) -> bool {
    if want.abs() < MIN_MAGNITUDE {
        return got == 0.0;
    }
    (got - want).abs() <= ALPHA * want.abs() * (1.0 + 1e-12)
}

proptest! {
    /// Every quantile is within α of the exact one, latencies spanning
    /// six orders of magnitude, with either sign and zeros.
    #[test]
    fn quantiles_are_within_the_relative_error(
        xs in proptest::collection::vec(
            prop_oneof![
                8 => (-3.0f64..6.0).prop_map(|e| 10f64.powf(e)),
                1 => (-3.0f64..6.0).prop_map(|e| -10f64.powf(e)),
                1 => Just(0.0),
            ],
            1..2_000,
        ),
        q in 0.0f64..=1.0,
    ) {
        let mut sorted = xs.clone();
        sorted.sort_by(f64::total_cmp);
        let s = sketch(&xs);
        let got = s.quantile(q).unwrap();
        let want = exact(&sorted, q);
        prop_assert!(within_alpha(got, want), "q {}: {} vs {}", q, got, want);
    }

    /// Integer inputs (counts, milliseconds) too, at several quantiles
    /// of one sketch.
    #[test]
    fn integer_quantiles_are_within_the_relative_error(
        xs in proptest::collection::vec(-1_000_000i64..10_000_000, 1..3_000),
    ) {
        let ys: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
        let mut sorted = ys.clone();
        sorted.sort_by(f64::total_cmp);
        let s = sketch(&ys);
        prop_assert_eq!(s.count(), ys.len() as u64);
        for q in [0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0] {
            let (got, want) = (s.quantile(q).unwrap(), exact(&sorted, q));
            prop_assert!(within_alpha(got, want), "q {}: {} vs {}", q, got, want);
        }
    }

    /// Latency-like values (one sign, five decades: the dense store),
    /// split three ways and merged in either order, or with a part taken
    /// away again: the sketch of the whole (of the rest).
    #[test]
    fn dense_sketches_merge_and_subtract_exactly(
        xs in proptest::collection::vec((-1.0f64..4.0).prop_map(|e| 10f64.powf(e)), 0..2_000),
        a in 0usize..2_000,
        b in 0usize..2_000,
    ) {
        merges_and_subtracts_exactly(&xs, a, b)?;
    }

    /// A sketch cleared and used again (a query's accumulator, cell after
    /// cell) adds up as a fresh one: whatever it held is gone, whether it
    /// was dense or sparse.
    #[test]
    fn a_cleared_sketch_adds_up_as_a_fresh_one(
        before in proptest::collection::vec(prop_oneof![Just(0.0), 1.0f64..1e3, -1e4f64..1e6], 0..1_000),
        parts in proptest::collection::vec(
            proptest::collection::vec(prop_oneof![Just(0.0), 1.0f64..1e3, -1e4f64..1e6], 0..300),
            0..6,
        ),
    ) {
        let mut acc = sketch(&before);
        acc.clear();
        prop_assert!(acc.is_empty());
        let mut all = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            // Half the parts as a sketch, half as a snapshot row's entries.
            if i % 2 == 0 {
                acc.merge(&sketch(part));
            } else {
                acc.add_codes(&row_of(&sketch(part)));
            }
            all.extend_from_slice(part);
        }
        prop_assert_eq!(&acc, &sketch(&all));
        prop_assert_eq!(acc.quantiles(&[0.5, 0.99]), sketch(&all).quantiles(&[0.5, 0.99]));
    }

    /// Several quantiles in one pass answer as one at a time.
    #[test]
    fn quantiles_in_one_pass_equal_each_alone(
        xs in proptest::collection::vec(prop_oneof![Just(0.0), -1e4f64..1e6], 0..1_000),
        qs in proptest::collection::vec(0.0f64..=1.0, 0..8),
    ) {
        let mut qs = qs;
        qs.sort_by(f64::total_cmp);
        let s = sketch(&xs);
        let each: Vec<Option<f64>> = qs.iter().map(|&q| s.quantile(q)).collect();
        prop_assert_eq!(s.quantiles(&qs), each);
    }

    /// Rows read as the sketch they add up to answer as that sketch, at
    /// any percentile and from either end: snapshot rows (zeros among the
    /// entries) and sparse sketches' entries (zeros beside them), with
    /// entries of no bucket and of no count, which hold no values.
    #[test]
    fn rows_answer_as_the_sketch_they_add_up_to(
        parts in proptest::collection::vec(
            proptest::collection::vec(prop_oneof![Just(0.0), -1e4f64..-1.0, 1.0f64..1e3, 1.0f64..1e6], 0..200),
            0..20,
        ),
        qs in proptest::collection::vec(prop_oneof![Just(0.0), Just(0.01), Just(0.99), Just(1.0), 0.0f64..=1.0], 0..5),
    ) {
        let mut qs = qs;
        qs.sort_by(f64::total_cmp);
        let beyond = 2 * MAX_INDEX + 5;
        let (mut rows, mut zeros, mut all) = (Vec::new(), 0u64, Vec::new());
        for (i, part) in parts.iter().enumerate() {
            all.extend_from_slice(part);
            let mut row = row_of(&sketch(part));
            if i % 2 == 1 {
                // A sparse sketch's entries: its zeros beside them.
                zeros += row.iter().filter(|e| e.0 == 0).map(|e| u64::from(e.1)).sum::<u64>();
                row.retain(|e| e.0 != 0);
            }
            if i % 3 == 0 {
                row.insert(0, (-beyond, 7));
                row.push((beyond, 7));
                if let Some(&(c, _)) = row.get(row.len() / 2) {
                    row.insert(row.len() / 2, (c, 0));
                }
            }
            rows.push(row);
        }
        // `n` as the fold has it: what adding the rows counted.
        let mut added = QuantileSketch::new();
        for row in &rows {
            added.add_codes(row);
        }
        added.add_code(0, zeros);
        let whole = sketch(&all);
        prop_assert_eq!(&added, &whole);
        let slices: Vec<&[Entry]> = rows.iter().map(Vec::as_slice).collect();
        let read = Rows::new(&slices, zeros, added.count());
        prop_assert_eq!(read.quantiles(&qs), whole.quantiles(&qs));
    }

    /// High percentiles (answered walking down from the top) answer as
    /// one at a time too, across negatives, zeros and positives.
    #[test]
    fn high_quantiles_from_the_top_equal_each_alone(
        xs in prop_oneof![
            // Sparse: codes far apart.
            proptest::collection::vec(prop_oneof![Just(0.0), -1e4f64..1e6], 1..1_000),
            // Dense: a run of a few hundred codes, and zeros beside it.
            proptest::collection::vec(prop_oneof![Just(0.0), 1.0f64..1e3], 1..1_000),
        ],
        qs in proptest::collection::vec(prop_oneof![Just(0.5), Just(0.99), Just(1.0), 0.5f64..=1.0], 1..4),
    ) {
        let mut qs = qs;
        qs.sort_by(f64::total_cmp);
        let s = sketch(&xs);
        let each: Vec<Option<f64>> = qs.iter().map(|&q| s.quantile(q)).collect();
        prop_assert_eq!(s.quantiles(&qs), each);
    }

    /// Merging the sketches of any split gives the sketch of the whole.
    #[test]
    fn any_split_merges_to_the_whole(
        xs in proptest::collection::vec(-1e6f64..1e6, 0..500),
        cut in 0usize..500,
    ) {
        let cut = cut.min(xs.len());
        let mut parts = sketch(&xs[cut..]);
        parts.merge(&sketch(&xs[..cut]));
        prop_assert_eq!(parts, sketch(&xs));
    }
}

/// Values on and next to every bucket boundary (γ^i, where the float
/// math of `ln x / ln γ` is closest to an integer) land in a bucket that
/// answers within α of them.
#[test]
fn bucket_edges_answer_within_alpha() {
    for i in -2_000..=2_000 {
        let edge = GAMMA.powi(i);
        for x in [edge, edge.next_up(), edge.next_down(), -edge] {
            let b = index_of(x).unwrap();
            assert!(within_alpha(b.value(), x), "{x} in {b:?}: {}", b.value());
        }
    }
    for x in [1e-9, 1e300, f64::MAX, -f64::MAX, 5e-324] {
        let b = index_of(x).unwrap();
        if x.abs() >= MIN_MAGNITUDE && x.abs() <= 1e300 {
            assert!(within_alpha(b.value(), x), "{x}");
        }
    }
}

#[test]
fn codes_round_trip_and_sort_as_values() {
    let xs = [-1e300, -37.2, -1.0, -1e-6, 0.0, 1e-6, 0.5, 1.0, 37.2, 1e300];
    let codes: Vec<i32> = xs.iter().map(|&x| index_of(x).unwrap().code()).collect();
    assert!(codes.windows(2).all(|w| w[0] < w[1]), "{codes:?}");
    for (&x, &c) in xs.iter().zip(&codes) {
        assert_eq!(Bucket::from_code(c), index_of(x));
    }
    for i in [-MAX_INDEX, -1, 0, 1, MAX_INDEX] {
        for b in [Bucket::Positive(i), Bucket::Negative(i)] {
            assert_eq!(Bucket::from_code(b.code()), Some(b));
        }
    }
    assert_eq!(Bucket::from_code(2 * MAX_INDEX + 2), None);
    assert_eq!(Bucket::from_code(i32::MIN), None);
}

#[test]
fn subtracting_a_part_leaves_the_rest() {
    let mut whole = sketch(&[1.0, 2.0, 2.0, 300.0, -4.0]);
    let part = sketch(&[2.0, 300.0]);
    whole.subtract(&part);
    assert_eq!(whole, sketch(&[1.0, 2.0, -4.0]));
    whole.subtract(&sketch(&[1.0, 1.0, 2.0, -4.0]));
    assert!(whole.is_empty());
}

#[test]
fn buckets_round_trip_through_their_text() {
    for x in [1e-12, 0.5, 1.0, 37.2, 1e300, -1e300, -0.001] {
        let b = index_of(x).unwrap();
        assert_eq!(Bucket::parse(&b.encode()), Some(b));
        assert!(
            within_alpha(b.value(), if b == Bucket::Zero { 0.0 } else { x }),
            "{x}"
        );
    }
    assert_eq!(Bucket::parse("+99999999"), None);
    assert_eq!(Bucket::parse("x1"), None);
    assert_eq!(index_of(f64::NAN), None);
}

#[test]
fn an_empty_sketch_has_no_quantile_and_q_is_checked() {
    assert_eq!(QuantileSketch::new().quantile(0.5), None);
    let s = sketch(&[1.0, 2.0, 3.0]);
    assert_eq!(s.quantile(1.5), None);
    assert!(within_alpha(s.quantile(0.0).unwrap(), 1.0));
    assert!(within_alpha(s.quantile(1.0).unwrap(), 3.0));
    assert!(within_alpha(s.quantile(0.5).unwrap(), 2.0));
}

proptest! {
    /// Integer latencies with many zeros (the zero bucket is kept beside
    /// the store), merged from parts in any order and with a part taken
    /// away: the sketch of the whole (of the rest), and its quantiles
    /// within the relative error of the exact ones.
    #[test]
    fn zeros_merge_and_subtract_exactly(
        xs in proptest::collection::vec(prop_oneof![Just(0i64), 0i64..5_000], 0..1_500),
        a in 0usize..1_500,
        b in 0usize..1_500,
    ) {
        let xs: Vec<f64> = xs.into_iter().map(|x| x as f64).collect();
        let whole = merges_and_subtracts_exactly(&xs, a, b)?;
        let mut sorted = xs.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            if let Some(got) = whole.quantile(q) {
                let want = exact(&sorted, q);
                prop_assert!(within_alpha(got, want), "q {}: {} vs {}", q, got, want);
            }
        }
    }
}

proptest! {
    /// A row added at once (a snapshot row: codes ascending, some out of
    /// range) counts as its entries added one by one, whatever the sketch
    /// already held (empty, a few buckets, a dense run, far codes).
    #[test]
    fn a_row_added_at_once_counts_as_its_entries_one_by_one(
        held in proptest::collection::vec(prop_oneof![Just(0.0), -1e3f64..1e5, 1e200f64..1e300], 0..300),
        row in proptest::collection::vec((-80_000i32..80_000, 0u32..5), 0..400),
        near in proptest::collection::vec((prop_oneof![Just(0i32), 34_000i32..35_500], 1u32..5), 0..200),
    ) {
        let mut row: Vec<Entry> = row.into_iter().chain(near).collect();
        row.sort_unstable();
        let mut at_once = sketch(&held);
        at_once.add_codes(&row);
        let mut one_by_one = sketch(&held);
        row.iter().for_each(|&(c, n)| one_by_one.add_code(c, u64::from(n)));
        prop_assert_eq!(at_once.count(), one_by_one.count());
        prop_assert_eq!(at_once, one_by_one);
    }
}

proptest! {
    /// A query's accumulator (made dense by a row) takes sketches of every
    /// store (sparse or dense, near or far codes, zeros) as their values
    /// added one by one.
    #[test]
    fn a_dense_accumulator_merges_any_sketch_as_its_values(
        row in proptest::collection::vec((34_000i32..34_400, 1u32..5), 8..100),
        parts in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(1.0f64..1e3, 0..400),
                proptest::collection::vec(prop_oneof![Just(0.0), 1.0f64..1e3], 0..60),
                proptest::collection::vec(prop_oneof![-1e4f64..1e6, 1e200f64..1e300], 0..60),
            ],
            1..6,
        ),
    ) {
        let mut row = row;
        row.sort_unstable();
        row.dedup_by_key(|e| e.0);
        let mut acc = QuantileSketch::new();
        acc.add_codes(&row);
        let mut want = QuantileSketch::new();
        row.iter().for_each(|&(c, n)| want.add_code(c, u64::from(n)));
        for xs in &parts {
            acc.merge(&sketch(xs));
            xs.iter().for_each(|&x| want.add(x));
        }
        prop_assert_eq!(acc.count(), want.count());
        prop_assert_eq!(acc, want);
    }
}

/// `s`'s buckets as a snapshot row holds them.
fn row_of(s: &QuantileSketch) -> Vec<Entry> {
    let mut row = Vec::new();
    s.by_code().for_each(|(c, n)| push_entry(&mut row, c, n));
    row
}

/// Sparse entries hold 32-bit counts; a bucket counting more stays exact
/// whichever way it got there (one add, adds to an entry, a merge of two
/// sorted lists, a row of split entries, a subtraction), and the sketch
/// answers as the same counts held any other way.
#[test]
fn counts_past_32_bits_stay_exact() {
    let code = |x: f64| index_of(x).map(|b| b.code()).unwrap_or_default();
    let max = u64::from(u32::MAX);
    let (five, neg, far) = (code(5.0), code(-2.0), code(1e6));
    let want = vec![(neg, 1), (five, max + 7), (far, 3)];

    let mut merged = QuantileSketch::new();
    merged.add_code(five, max);
    merged.add_code(far, 3);
    let mut other = QuantileSketch::new();
    other.add_code(five, 7);
    other.add_code(neg, 1);
    merged.merge(&other);
    assert_eq!(merged.by_code().collect::<Vec<_>>(), want);
    assert_eq!(merged.count(), max + 11);

    let mut added = QuantileSketch::new();
    added.add_code(neg, 1);
    added.add_code(five, max - 1);
    added.add_code(five, 8);
    added.add_code(far, 3);
    assert_eq!(added, merged);

    let mut at_once = QuantileSketch::new();
    at_once.add_code(five, max + 7);
    at_once.add_code(far, 3);
    at_once.add_code(neg, 1);
    assert_eq!(at_once, merged);

    let row = row_of(&merged);
    assert_eq!(row.len(), 4, "{row:?}");
    let mut from_row = QuantileSketch::new();
    from_row.add_codes(&row);
    assert_eq!(from_row, merged);
    let mut into_dense = sketch(&(1..200).map(f64::from).collect::<Vec<_>>());
    into_dense.merge(&merged);
    let mut want_dense = sketch(&(1..200).map(f64::from).collect::<Vec<_>>());
    want.iter().for_each(|&(c, n)| want_dense.add_code(c, n));
    assert_eq!(into_dense, want_dense);

    assert_eq!(merged.quantile(0.5), index_of(5.0).map(Bucket::value));
    merged.subtract(&other);
    assert_eq!(
        merged.by_code().collect::<Vec<_>>(),
        vec![(five, max), (far, 3)]
    );
}

proptest! {
    /// A query's accumulator drained into a group's total, cell after cell:
    /// the total gains each cell's values, and the accumulator is left
    /// empty, adding up the next cell as a fresh sketch would.
    #[test]
    fn a_drained_sketch_adds_to_the_total_and_starts_empty(
        held in proptest::collection::vec(prop_oneof![Just(0.0), -1e3f64..1e5, 1e200f64..1e300], 0..200),
        cells in proptest::collection::vec(
            proptest::collection::vec(prop_oneof![Just(0.0), 1.0f64..1e3, -1e4f64..1e6], 0..300),
            1..5,
        ),
    ) {
        let mut total = sketch(&held);
        let mut want = sketch(&held);
        let mut acc = QuantileSketch::new();
        for xs in &cells {
            acc.add_codes(&row_of(&sketch(xs)));
            acc.merge(&sketch(xs));
            acc.drain_into(&mut total);
            prop_assert!(acc.is_empty());
            want.merge(&sketch(xs));
            want.merge(&sketch(xs));
        }
        prop_assert_eq!(&total, &want);
        acc.merge(&sketch(&cells[0]));
        prop_assert_eq!(acc, sketch(&cells[0]));
    }
}

proptest! {
    /// A rolling window's running sum: sketches (sparse and dense, zeros
    /// among the values) are added as they enter and taken back as they
    /// leave, in window order; after every move it is the sketch of the
    /// values inside.
    #[test]
    fn a_running_sum_takes_back_what_leaves(
        parts in proptest::collection::vec(
            prop_oneof![
                // Latencies over three decades (a dense run), or values of
                // either sign over ten (a sparse list).
                proptest::collection::vec(prop_oneof![Just(0.0), 1.0f64..1e3], 0..400),
                proptest::collection::vec(prop_oneof![Just(0.0), 1.0f64..1e3, -1e4f64..1e6], 0..400),
            ],
            1..8,
        ),
        width in 1usize..4,
    ) {
        let sketches: Vec<QuantileSketch> = parts.iter().map(|p| sketch(p)).collect();
        let mut running = QuantileSketch::new();
        for hi in 0..sketches.len() + width {
            if hi < sketches.len() {
                running.merge(&sketches[hi]);
            }
            if let Some(out) = (hi + 1).checked_sub(width + 1) {
                if out < sketches.len() {
                    running.subtract(&sketches[out]);
                }
            }
            let lo = (hi + 1).saturating_sub(width);
            let inside: Vec<f64> = parts[lo.min(parts.len())..(hi + 1).min(parts.len())].concat();
            prop_assert_eq!(&running, &sketch(&inside), "after {}", hi);
        }
        prop_assert!(running.is_empty());
    }
}

#[test]
fn a_runs_occupied_part_is_found_as_a_scan_finds_it() {
    // Lengths either side of the eight-count step, non-zero counts at every
    // pair of places (and none at all).
    for len in [0usize, 1, 7, 8, 9, 16, 17, 40] {
        for a in 0..len {
            for b in a..len {
                let mut counts = vec![0u64; len];
                counts[a] = 3;
                counts[b] = 1;
                assert_eq!(occupied(&counts), Some((a, b)), "{len} {a} {b}");
            }
        }
        assert_eq!(occupied(&vec![0u64; len]), None, "{len}");
    }
}
