//! The generator's random source: SplitMix64, seeded, with the same output on
//! every platform and every version of this crate's dependencies (unlike
//! `rand`'s `StdRng`, whose algorithm may change). Also a Zipf-like sampler.

/// A small, fast, deterministic random number generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng {
            state: seed ^ 0x5851_f42d_4c95_7f2d,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[lo, hi]` (inclusive); `lo` when `hi < lo`.
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        let span = (hi as i128 - lo as i128 + 1) as u128;
        let r = ((self.next_u64() as u128 * span) >> 64) as i128;
        (lo as i128 + r) as i64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

/// Ranks `0..n` with a Zipf-like skew: rank `r` is drawn with probability
/// roughly proportional to `1 / (r + 1)^s` (a bounded power law, sampled by
/// inverting its continuous CDF). `s = 0` is uniform.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Zipf {
    n: u64,
    s: f64,
    /// `(n + 1)^(1 - s) - 1`, or `ln(n + 1)` when `s == 1`.
    span: f64,
}

impl Zipf {
    pub(crate) fn new(n: u64, s: f64) -> Zipf {
        let n = n.max(1);
        let top = (n + 1) as f64;
        let span = if (s - 1.0).abs() < 1e-9 {
            top.ln()
        } else {
            top.powf(1.0 - s) - 1.0
        };
        Zipf { n, s, span }
    }

    pub(crate) fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let x = if (self.s - 1.0).abs() < 1e-9 {
            (u * self.span).exp()
        } else {
            (u * self.span + 1.0).powf(1.0 / (1.0 - self.s))
        };
        ((x as u64).saturating_sub(1)).min(self.n - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(7).next_u64(), Rng::new(8).next_u64());
    }

    #[test]
    fn ranges_hold() {
        let mut r = Rng::new(1);
        for _ in 0..10_000 {
            assert!(r.below(5) < 5);
            let x = r.between(-3, 3);
            assert!((-3..=3).contains(&x));
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let z = Zipf::new(100, 1.1);
        let mut r = Rng::new(3);
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[z.sample(&mut r) as usize] += 1;
        }
        assert!(counts[0] > 5 * counts[20], "{:?}", &counts[..25]);
        assert!(counts.iter().filter(|c| **c > 0).count() > 80);
        let uniform = Zipf::new(10, 0.0);
        let mut c = [0u32; 10];
        for _ in 0..100_000 {
            c[uniform.sample(&mut r) as usize] += 1;
        }
        assert!(c.iter().all(|x| (8_000..12_000).contains(x)), "{c:?}");
    }
}
