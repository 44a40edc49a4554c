//! The cardinality estimate: Redis's `hllCount` (Ertl's improved raw
//! estimator, Redis >= 5), so that an estimate here equals `PFCOUNT` over the
//! same registers.

use super::{Q, REGISTERS};

/// The estimate `PFCOUNT` gives for registers as [`Hll::sparse_registers`]
/// gives them.
pub fn count_registers(regs: &[u32]) -> u64 {
    let mut histo = [0u32; 64];
    histo[0] = (REGISTERS - regs.len()) as u32;
    for &e in regs {
        histo[(e & 63) as usize] += 1;
    }
    estimate(&histo)
}

/// The estimate for dense registers (one byte each).
pub(super) fn dense_count(regs: &[u8]) -> u64 {
    // Four histograms, summed: consecutive registers with the same value
    // would otherwise wait on each other's increment.
    let mut four = [[0u32; 64]; 4];
    for c in regs.chunks_exact(4) {
        for (h, &r) in four.iter_mut().zip(c) {
            h[(r & 63) as usize] += 1;
        }
    }
    let mut histo = [0u32; 64];
    for (i, total) in histo.iter_mut().enumerate() {
        *total = four.iter().map(|h| h[i]).sum();
    }
    estimate(&histo)
}

/// Redis's `hllCount` from a histogram of register values.
pub(super) fn estimate(histo: &[u32; 64]) -> u64 {
    let m = REGISTERS as f64;
    let q = Q as usize;
    if histo[0] as usize == REGISTERS {
        // No register set: sigma(1) is infinite, the estimate 0.
        return 0;
    }
    let mut z = m * tau((m - histo[q + 1] as f64) / m);
    // While z is 0, the steps for empty ranks above the highest one set
    // leave it 0 (0 + 0, halved): start at that rank. The same float
    // operations run from there, so the estimate is unchanged. A serving
    // answer counts a sketch per cell, most of them with ranks below 20.
    let top = if z == 0.0 {
        (1..=q).rev().find(|&j| histo[j] != 0).unwrap_or(0)
    } else {
        q
    };
    for j in (1..=top).rev() {
        z += histo[j] as f64;
        z *= 0.5;
    }
    z += m * sigma_of(histo[0]);
    const ALPHA_INF: f64 = 0.721_347_520_444_481_7;
    (ALPHA_INF * m * m / z).round() as u64
}

/// `sigma(zeros / m)` for each possible number of zero registers, computed
/// once: the serving layer counts a sketch per answer cell, and `sigma`'s
/// series converges slowly when few registers are set (most of a count).
/// The values are those `sigma` gives, so every estimate is unchanged.
fn sigma_of(zeros: u32) -> f64 {
    static TABLE: std::sync::OnceLock<Box<[f64]>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..=REGISTERS)
            .map(|z| sigma(z as f64 / REGISTERS as f64))
            .collect()
    });
    table[(zeros as usize).min(REGISTERS)]
}

pub(super) fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let z_prime = z;
        z += x * y;
        y += y;
        if z_prime == z {
            return z;
        }
    }
}

pub(super) fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let z_prime = z;
        y *= 0.5;
        z -= (1.0 - x) * (1.0 - x) * y;
        if z_prime == z {
            return z / 3.0;
        }
    }
}
