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
    estimate(&dense_histogram(regs))
}

/// How many registers hold each value. Registers are read eight at a time:
/// while all eight are below 16 (nearly always), each two of them make one
/// index into a table of value pairs, so a word costs four increments, not
/// eight; the pairs are split into values once at the end. Four tables,
/// because neighbouring registers often repeat a pair, and one table would
/// make each increment wait on the last. Half the time of a histogram a
/// register at a time: a query counts a dense total per group.
fn dense_histogram(regs: &[u8]) -> [u32; 64] {
    let mut histo = [0u32; 64];
    let mut pairs = [[0u32; 256]; 4];
    let words = regs.chunks_exact(8);
    let rest = words.remainder();
    for word in words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        if w & 0xF0F0_F0F0_F0F0_F0F0 == 0 {
            // Byte 2k becomes register 2k | register 2k+1 << 4.
            let x = (w | (w >> 4)) & 0x00FF_00FF_00FF_00FF;
            for (k, table) in pairs.iter_mut().enumerate() {
                table[((x >> (16 * k)) & 0xff) as usize] += 1;
            }
        } else {
            for r in word {
                histo[(r & 63) as usize] += 1;
            }
        }
    }
    for &r in rest {
        histo[(r & 63) as usize] += 1;
    }
    let mut sum = [0u32; 256];
    for table in &pairs {
        for (s, &n) in sum.iter_mut().zip(table) {
            *s += n;
        }
    }
    for (pair, &n) in sum.iter().enumerate() {
        histo[pair & 15] += n;
    }
    for (high, run) in sum.chunks_exact(16).enumerate() {
        histo[high] += run.iter().sum::<u32>();
    }
    histo
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

#[cfg(test)]
mod tests {
    /// Registers with every value from 0 to 63, in runs and alone, so that
    /// words of registers below 16 and words with a larger one both occur.
    fn registers(len: usize) -> Vec<u8> {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|i| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                match i % 97 {
                    0..=40 => 0,
                    41..=90 => (seed % 16) as u8,
                    _ => (seed % 64) as u8,
                }
            })
            .collect()
    }

    #[test]
    fn the_dense_histogram_counts_each_register_once() {
        for len in [0, 7, 8, 1_000, 1_003, super::REGISTERS] {
            let regs = registers(len);
            let mut want = [0u32; 64];
            for &r in &regs {
                want[r as usize] += 1;
            }
            assert_eq!(super::dense_histogram(&regs), want, "{len} registers");
        }
    }
}
