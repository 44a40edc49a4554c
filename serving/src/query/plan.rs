//! Which roll-up level answers which part of a query's range.
//!
//! A query asks for the base buckets starting in `[from, to)`, folded into
//! output buckets of its granularity `g`. A level `l` can answer a span
//! exactly when `l` divides `g` (each level bucket falls in one output
//! bucket) and the span's edges are multiples of `l` (no level bucket is cut
//! by the range). [`pieces`] splits the range so that its middle is read at
//! the coarsest such level and the ragged edges at finer ones, down to the
//! base level, which always fits.
//!
//! Guarantee: the pieces are disjoint, cover the range exactly, and each is
//! aligned to its level, so reading each piece at its level gives the same
//! answer as reading the whole range at the base level (the monoid).

/// The base-aligned range of a query: base buckets starting in `[from, to)`
/// are those in `[ceil(from), ceil(to))`.
pub fn base_range(base_ms: i64, from: i64, to: i64) -> (i64, i64) {
    (ceil(from, base_ms), ceil(to, base_ms))
}

fn ceil(t: i64, step: i64) -> i64 {
    -((-t).div_euclid(step) * step)
}

fn floor(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

/// Split `[from, to)` (aligned to `levels[0]`, the base) into pieces
/// `(level, from, to)`. `levels` are the levels available, finest first;
/// only those dividing `g_ms` are used.
pub fn pieces(levels: &[i64], g_ms: i64, from: i64, to: i64) -> Vec<(i64, i64, i64)> {
    let usable: Vec<i64> = match levels.split_first() {
        None => return Vec::new(),
        Some((&base, rest)) => std::iter::once(base)
            .chain(rest.iter().copied().filter(|&l| g_ms % l == 0 && l > base))
            .collect(),
    };
    let mut out = Vec::new();
    split(&usable, usable.len() - 1, from, to, &mut out);
    out
}

fn split(levels: &[i64], i: usize, from: i64, to: i64, out: &mut Vec<(i64, i64, i64)>) {
    if from >= to {
        return;
    }
    let l = levels[i];
    if i == 0 {
        out.push((l, from, to));
        return;
    }
    let (a, b) = (ceil(from, l), floor(to, l));
    if a < b {
        split(levels, i - 1, from, a, out);
        out.push((l, a, b));
        split(levels, i - 1, b, to, out);
    } else {
        split(levels, i - 1, from, to, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 60_000;
    const H: i64 = 60 * M;
    const D: i64 = 24 * H;

    #[test]
    fn the_middle_is_read_coarse_and_the_edges_fine() {
        let levels = [M, H, D];
        // A whole day at a daily granularity: one daily piece.
        assert_eq!(pieces(&levels, D, 0, D), vec![(D, 0, D)]);
        // 00:30 to 03:15 by hour: minutes, hours, minutes.
        assert_eq!(
            pieces(&levels, H, 30 * M, 3 * H + 15 * M),
            vec![(M, 30 * M, H), (H, H, 3 * H), (M, 3 * H, 3 * H + 15 * M)]
        );
        // 6-hour buckets: the daily level does not divide them.
        assert_eq!(pieces(&levels, 6 * H, 0, 2 * D), vec![(H, 0, 2 * D)]);
        // 5-minute buckets: only the base.
        assert_eq!(pieces(&levels, 5 * M, 0, D), vec![(M, 0, D)]);
        // Two days and a bit, by day.
        assert_eq!(
            pieces(&levels, D, 23 * H, 3 * D + 2 * M),
            vec![(H, 23 * H, D), (D, D, 3 * D), (M, 3 * D, 3 * D + 2 * M)]
        );
    }

    #[test]
    fn pieces_cover_the_range_exactly_and_align() {
        let levels = [M, H, D];
        for (from, to, g) in [
            (-7 * M, 5 * D + 3 * M, D),
            (0, 1, M),
            (13 * M, 14 * M, H),
            (-3 * D, -D - M, 2 * H),
        ] {
            let (from, to) = base_range(M, from, to);
            let p = pieces(&levels, g, from, to);
            let mut at = from;
            for &(l, a, b) in &p {
                assert_eq!(a, at);
                assert!(a < b && a % l == 0 && b % l == 0 && g % l == 0);
                at = b;
            }
            assert_eq!(at, to);
        }
        assert_eq!(base_range(M, 1, M + 1), (M, 2 * M));
        assert_eq!(base_range(M, -M - 1, 0), (-M, 0));
    }
}
