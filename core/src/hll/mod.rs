//! HyperLogLog compatible with Redis (`PFADD`, `PFCOUNT`, `PFMERGE`).
//!
//! The speed layer counts distinct values with Redis's own `PFADD`; the batch
//! layer builds sketches here; the serving layer merges the two. For that to be
//! sound this module reproduces Redis's choices bit for bit: p = 14 (16,384
//! registers of 6 bits), MurmurHash64A with seed `0xadc83b19`, the register value
//! as the run of zeros after the index bits plus one (capped at Q + 1 = 51), the
//! dense and sparse byte encodings returned by `GET`, and the cardinality
//! estimator of Redis ≥ 5 (Ertl's improved raw estimator), so that an estimate
//! here equals `PFCOUNT` over the same registers.
//!
//! In memory a sketch starts sparse (a sorted list of non-zero registers) and
//! turns dense past a few hundred registers, so the many small sketches of a
//! batch view stay small.

use std::fmt;

mod encoding;
mod estimate;
mod hash;
pub mod sketch_log;
mod sliding;
mod union;

pub use encoding::append_redis_bytes;
pub use estimate::count_registers;
pub use hash::{murmurhash64a, pattern};
pub use sliding::Sliding;
pub use union::Union;

use encoding::{dense_get, dense_set, header, sparse_of};
use estimate::dense_count;

/// Index bits.
pub const P: u32 = 14;
/// Number of registers.
pub const REGISTERS: usize = 1 << P;
/// Bits of hash left after the index, as in Redis.
const Q: u32 = 64 - P;
const HASH_SEED: u64 = 0xadc8_3b19;
const HEADER_LEN: usize = 16;
const DENSE_REG_BYTES: usize = (REGISTERS * 6).div_ceil(8);
/// Length of a dense Redis value (`GET` of a dense key).
pub const DENSE_LEN: usize = HEADER_LEN + DENSE_REG_BYTES;
/// Redis's default `hll-sparse-max-bytes`.
const SPARSE_MAX_BYTES: usize = 3000;
/// Sparse sketches in memory promote to dense past this many registers.
const SPARSE_MAX_REGS: usize = 768;
/// Largest value the sparse encoding can hold.
const SPARSE_VAL_MAX: u8 = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HllError {
    #[error("not a Redis HyperLogLog: missing `HYLL` header")]
    BadMagic,
    #[error("unknown HyperLogLog encoding {0}")]
    BadEncoding(u8),
    #[error("dense HyperLogLog has {0} bytes, expected {DENSE_LEN}")]
    BadDenseLength(usize),
    #[error("sparse HyperLogLog does not cover exactly {REGISTERS} registers")]
    BadSparse,
}

/// A HyperLogLog sketch with Redis's parameters.
#[derive(Clone, PartialEq, Eq)]
pub struct Hll {
    repr: Repr,
}

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    /// Non-zero registers as `(index << 8) | value`, sorted by index.
    Sparse(Vec<u32>),
    /// One byte per register.
    Dense(Box<[u8]>),
}

impl Default for Hll {
    fn default() -> Self {
        Hll::new()
    }
}

impl fmt::Debug for Hll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hll")
            .field("estimate", &self.count())
            .finish()
    }
}

impl Hll {
    pub fn new() -> Self {
        Hll {
            repr: Repr::Sparse(Vec::new()),
        }
    }

    /// Add one value, hashed exactly as Redis's `PFADD` hashes its argument bytes.
    pub fn add(&mut self, value: &[u8]) {
        let (index, rank) = pattern(value);
        self.set_max(index, rank);
    }

    /// Register-wise maximum: the sketch of the union.
    pub fn merge(&mut self, other: &Hll) {
        match &other.repr {
            Repr::Sparse(theirs) => {
                if !theirs.is_empty() {
                    self.merge_registers(theirs);
                }
            }
            Repr::Dense(regs) => {
                let mine = self.make_dense();
                for (a, &b) in mine.iter_mut().zip(regs.iter()) {
                    *a = (*a).max(b);
                }
            }
        }
    }

    /// The cardinality estimate `PFCOUNT` gives for these registers.
    pub fn count(&self) -> u64 {
        match &self.repr {
            Repr::Sparse(entries) => count_registers(entries),
            Repr::Dense(regs) => dense_count(regs),
        }
    }

    /// Whether no value was added.
    pub fn is_empty(&self) -> bool {
        match &self.repr {
            Repr::Sparse(e) => e.is_empty(),
            Repr::Dense(r) => r.iter().all(|&v| v == 0),
        }
    }

    /// The registers of a sparse sketch, `(index << 8) | value` sorted by
    /// index (`None` for a dense one): what [`Hll::merge_registers`],
    /// [`count_registers`] and [`Union::add_registers`] take, so that many
    /// small sketches can be kept in one buffer.
    pub fn sparse_registers(&self) -> Option<&[u32]> {
        match &self.repr {
            Repr::Sparse(e) => Some(e),
            Repr::Dense(_) => None,
        }
    }

    /// Merge registers given as [`Hll::sparse_registers`] gives them. Into
    /// a sparse sketch, in one pass over both sorted lists (inserting one
    /// register at a time moves the tail of the list each time: quadratic,
    /// most of a query's time when it unions hundreds of small sketches).
    pub fn merge_registers(&mut self, regs: &[u32]) {
        match &mut self.repr {
            Repr::Sparse(mine) => {
                if mine.is_empty() {
                    mine.extend_from_slice(regs);
                } else {
                    *mine = merge_sparse(mine, regs);
                }
                self.maybe_densify();
            }
            Repr::Dense(dense) => {
                for &e in regs {
                    let (i, v) = ((e >> 8) as usize, (e & 0xff) as u8);
                    if let Some(r) = dense.get_mut(i) {
                        *r = (*r).max(v);
                    }
                }
            }
        }
    }

    /// Bytes the sketch holds on the heap: what a memory budget counts.
    pub fn heap_bytes(&self) -> usize {
        match &self.repr {
            Repr::Sparse(e) => e.capacity() * std::mem::size_of::<u32>(),
            Repr::Dense(r) => r.len(),
        }
    }

    /// The non-zero registers as `(index << 8) | value`, by index, whatever
    /// the representation ([`Hll::sparse_registers`]' layout).
    pub fn entries(&self) -> Vec<u32> {
        match &self.repr {
            Repr::Sparse(entries) => entries.clone(),
            Repr::Dense(regs) => dense_entries(regs),
        }
    }

    /// The register values, one byte each.
    pub fn registers(&self) -> Vec<u8> {
        match &self.repr {
            Repr::Dense(r) => r.to_vec(),
            Repr::Sparse(entries) => {
                let mut regs = vec![0u8; REGISTERS];
                for &e in entries {
                    regs[(e >> 8) as usize] = (e & 0xff) as u8;
                }
                regs
            }
        }
    }

    /// Decode a value as returned by Redis's `GET` on a HyperLogLog key
    /// (dense or sparse encoding). The cached cardinality is ignored.
    pub fn from_redis_bytes(bytes: &[u8]) -> Result<Hll, HllError> {
        if bytes.len() < HEADER_LEN || &bytes[..4] != b"HYLL" {
            return Err(HllError::BadMagic);
        }
        let body = &bytes[HEADER_LEN..];
        match bytes[4] {
            0 => {
                if bytes.len() != DENSE_LEN {
                    return Err(HllError::BadDenseLength(bytes.len()));
                }
                let regs: Box<[u8]> = (0..REGISTERS).map(|i| dense_get(body, i)).collect();
                let mut h = Hll {
                    repr: Repr::Dense(regs),
                };
                h.maybe_sparsify();
                Ok(h)
            }
            1 => {
                let mut entries = Vec::new();
                let mut idx = 0usize;
                let mut i = 0usize;
                while i < body.len() {
                    let b = body[i];
                    if b & 0xc0 == 0 {
                        // ZERO: 00xxxxxx, run of (x + 1) zero registers.
                        idx += (b & 0x3f) as usize + 1;
                        i += 1;
                    } else if b & 0xc0 == 0x40 {
                        // XZERO: 01xxxxxx yyyyyyyy, run of (xy + 1) zero registers.
                        let next = *body.get(i + 1).ok_or(HllError::BadSparse)?;
                        idx += ((((b & 0x3f) as usize) << 8) | next as usize) + 1;
                        i += 2;
                    } else {
                        // VAL: 1vvvvvxx, run of (x + 1) registers of value (v + 1).
                        let val = ((b >> 2) & 0x1f) + 1;
                        let run = (b & 0x03) as usize + 1;
                        if idx + run > REGISTERS {
                            return Err(HllError::BadSparse);
                        }
                        for r in idx..idx + run {
                            entries.push(((r as u32) << 8) | val as u32);
                        }
                        idx += run;
                        i += 1;
                    }
                    if idx > REGISTERS {
                        return Err(HllError::BadSparse);
                    }
                }
                if idx != REGISTERS {
                    return Err(HllError::BadSparse);
                }
                let mut h = Hll {
                    repr: Repr::Sparse(entries),
                };
                h.maybe_densify();
                Ok(h)
            }
            other => Err(HllError::BadEncoding(other)),
        }
    }

    /// Encode as Redis would store it: sparse while every register fits the
    /// sparse encoding and the result stays under `hll-sparse-max-bytes`, dense
    /// otherwise. The cached cardinality is marked invalid, so a Redis that is
    /// given these bytes with `SET` recomputes it on `PFCOUNT`.
    pub fn to_redis_bytes(&self) -> Vec<u8> {
        if let Some(sparse) = self.to_redis_sparse() {
            if sparse.len() <= SPARSE_MAX_BYTES {
                return sparse;
            }
        }
        self.to_redis_dense()
    }

    /// The dense Redis encoding (12,304 bytes).
    pub fn to_redis_dense(&self) -> Vec<u8> {
        let mut out = header(0, DENSE_LEN);
        out.resize(DENSE_LEN, 0);
        let body = &mut out[HEADER_LEN..];
        match &self.repr {
            Repr::Dense(regs) => {
                for (i, &v) in regs.iter().enumerate() {
                    dense_set(body, i, v);
                }
            }
            Repr::Sparse(entries) => {
                for &e in entries {
                    dense_set(body, (e >> 8) as usize, (e & 0xff) as u8);
                }
            }
        }
        out
    }

    /// The sparse Redis encoding, or `None` if a register is over 32. A sparse
    /// sketch is encoded in O(registers set): the speed layer encodes many
    /// small sketches at every flush.
    pub fn to_redis_sparse(&self) -> Option<Vec<u8>> {
        match &self.repr {
            Repr::Sparse(entries) => sparse_of(
                entries.len(),
                entries
                    .iter()
                    .map(|&e| ((e >> 8) as usize, (e & 0xff) as u8)),
            ),
            Repr::Dense(regs) => sparse_of(
                64,
                regs.iter()
                    .enumerate()
                    .filter(|(_, &v)| v != 0)
                    .map(|(i, &v)| (i, v)),
            ),
        }
    }

    fn set_max(&mut self, index: usize, rank: u8) {
        match &mut self.repr {
            Repr::Dense(regs) => {
                if regs[index] < rank {
                    regs[index] = rank;
                }
            }
            Repr::Sparse(entries) => {
                let key = (index as u32) << 8;
                match entries.binary_search_by(|e| (e & !0xff).cmp(&key)) {
                    Ok(pos) => {
                        if (entries[pos] & 0xff) < rank as u32 {
                            entries[pos] = key | rank as u32;
                        }
                    }
                    Err(pos) => {
                        entries.insert(pos, key | rank as u32);
                        self.maybe_densify();
                    }
                }
            }
        }
    }

    fn make_dense(&mut self) -> &mut [u8] {
        if let Repr::Sparse(_) = self.repr {
            self.repr = Repr::Dense(self.registers().into_boxed_slice());
        }
        match &mut self.repr {
            Repr::Dense(regs) => regs,
            Repr::Sparse(_) => unreachable!("just made dense"),
        }
    }

    fn maybe_densify(&mut self) {
        if matches!(&self.repr, Repr::Sparse(e) if e.len() > SPARSE_MAX_REGS) {
            self.make_dense();
        }
    }

    fn maybe_sparsify(&mut self) {
        if let Repr::Dense(regs) = &self.repr {
            let nonzero = regs.iter().filter(|&&v| v != 0).count();
            if nonzero <= SPARSE_MAX_REGS {
                let entries = regs
                    .iter()
                    .enumerate()
                    .filter(|(_, &v)| v != 0)
                    .map(|(i, &v)| ((i as u32) << 8) | v as u32)
                    .collect();
                self.repr = Repr::Sparse(entries);
            }
        }
    }
}

/// The union of two sparse register lists (`(index << 8) | value`, sorted by
/// index): each index once, with the larger value.
fn merge_sparse(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        match (x >> 8).cmp(&(y >> 8)) {
            std::cmp::Ordering::Less => {
                out.push(x);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(y);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(x.max(y));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The non-zero registers of dense `regs` as `(index << 8) | value`, by index.
fn dense_entries(regs: &[u8]) -> Vec<u32> {
    (regs.iter().enumerate())
        .filter(|&(_, &v)| v != 0)
        .map(|(i, &v)| ((i as u32) << 8) | v as u32)
        .collect()
}

#[cfg(test)]
mod tests;
