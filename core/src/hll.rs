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
        let mut histo = [0u32; 64];
        match &self.repr {
            Repr::Sparse(entries) => {
                histo[0] = (REGISTERS - entries.len()) as u32;
                for &e in entries {
                    histo[(e & 0xff) as usize] += 1;
                }
            }
            Repr::Dense(regs) => return dense_count(regs),
        }
        estimate(&histo)
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

/// A union of many sketches at once: a dense scratch of registers and the
/// list of those set, so that adding a sparse sketch costs its registers and
/// counting costs the registers set, not 16,384. Once a dense sketch is
/// added the list is dropped and the union works on all registers (a
/// register-wise maximum the compiler vectorises). The serving layer unions
/// the sketches of each answer cell with one `Union`, cleared between cells.
#[derive(Clone)]
pub struct Union {
    regs: Box<[u8]>,
    set: Vec<u16>,
    /// Every register may be set: `set` is not kept.
    all: bool,
}

impl Default for Union {
    fn default() -> Self {
        Union {
            regs: vec![0u8; REGISTERS].into_boxed_slice(),
            set: Vec::new(),
            all: false,
        }
    }
}

impl fmt::Debug for Union {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Union")
            .field("set", &self.set.len())
            .field("all", &self.all)
            .finish()
    }
}

impl Union {
    fn put(&mut self, index: usize, rank: u8) {
        let r = &mut self.regs[index];
        if *r == 0 && !self.all {
            self.set.push(index as u16);
        }
        if *r < rank {
            *r = rank;
        }
    }

    /// Add a sketch to the union.
    pub fn add(&mut self, h: &Hll) {
        match &h.repr {
            Repr::Sparse(entries) => self.add_registers(entries),
            Repr::Dense(regs) => {
                self.all = true;
                self.set.clear();
                for (a, &b) in self.regs.iter_mut().zip(regs.iter()) {
                    *a = (*a).max(b);
                }
            }
        }
    }

    /// Add registers given as [`Hll::sparse_registers`] gives them.
    pub fn add_registers(&mut self, regs: &[u32]) {
        for &e in regs {
            self.put((e >> 8) as usize, (e & 0xff) as u8);
        }
    }

    /// Whether nothing was added since the last clear.
    pub fn is_empty(&self) -> bool {
        if self.all {
            self.regs.iter().all(|&r| r == 0)
        } else {
            self.set.is_empty()
        }
    }

    /// The estimate `PFCOUNT` gives for the union.
    pub fn count(&self) -> u64 {
        if self.all {
            return dense_count(&self.regs);
        }
        let mut histo = [0u32; 64];
        histo[0] = (REGISTERS - self.set.len()) as u32;
        for &i in &self.set {
            histo[self.regs[i as usize] as usize] += 1;
        }
        estimate(&histo)
    }

    /// Merge the union into `acc`.
    pub fn merge_into(&mut self, acc: &mut Hll) {
        if self.all {
            let regs = acc.make_dense();
            for (a, &b) in regs.iter_mut().zip(self.regs.iter()) {
                *a = (*a).max(b);
            }
            return;
        }
        let small = match &acc.repr {
            Repr::Sparse(e) => e.len() + self.set.len() <= SPARSE_MAX_REGS,
            Repr::Dense(_) => false,
        };
        if small {
            self.set.sort_unstable();
            let entries: Vec<u32> = self
                .set
                .iter()
                .map(|&i| ((i as u32) << 8) | self.regs[i as usize] as u32)
                .collect();
            acc.merge(&Hll {
                repr: Repr::Sparse(entries),
            });
        } else {
            let regs = acc.make_dense();
            for &i in &self.set {
                let i = i as usize;
                regs[i] = regs[i].max(self.regs[i]);
            }
        }
    }

    /// Empty the union (in time proportional to the registers set).
    pub fn clear(&mut self) {
        if self.all {
            self.regs.fill(0);
            self.all = false;
        } else {
            for &i in &self.set {
                self.regs[i as usize] = 0;
            }
        }
        self.set.clear();
    }
}

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
fn dense_count(regs: &[u8]) -> u64 {
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

/// The Redis encoding of a sketch given as its non-zero registers
/// `(index, value)`, sorted by index, each once: byte for byte what
/// [`Hll::to_redis_bytes`] writes for those registers, in time proportional to
/// the number of registers set. The batch layer keeps its sketches this way.
pub fn redis_bytes_of(registers: &[(u32, u32)]) -> Vec<u8> {
    if registers.iter().all(|&(_, v)| v <= SPARSE_VAL_MAX as u32) {
        let pairs = registers.iter().map(|&(i, v)| (i as usize, v as u8));
        if let Some(sparse) = sparse_of(registers.len(), pairs) {
            if sparse.len() <= SPARSE_MAX_BYTES {
                return sparse;
            }
        }
    }
    let mut out = header(0, DENSE_LEN);
    out.resize(DENSE_LEN, 0);
    for &(i, v) in registers {
        dense_set(&mut out[HEADER_LEN..], i as usize, v.min(63) as u8);
    }
    out
}

/// The sparse encoding of non-zero registers `(index, value)` sorted by
/// index, or `None` if a value is over 32 (or the indexes are not sorted).
/// `set` (about how many registers are set) sizes the buffer: the batch layer
/// keeps a million of these at once, so a sketch must not hold a dense-sized
/// allocation (that took its peak RSS from 1.5 to 6 GB).
fn sparse_of(set: usize, registers: impl Iterator<Item = (usize, u8)>) -> Option<Vec<u8>> {
    let mut out = header(1, HEADER_LEN + 2 * set + 4);
    let mut next = 0usize; // first register not yet encoded
    let (mut start, mut value, mut run) = (0usize, 0u8, 0usize);
    for (i, v) in registers {
        if v > SPARSE_VAL_MAX {
            return None;
        }
        if run > 0 && i == start + run && v == value {
            run += 1;
            continue;
        }
        if run > 0 {
            push_values(&mut out, value, run);
            next = start + run;
        }
        // Out of order: not encodable here (the dense encoding takes any order).
        push_zeros(&mut out, i.checked_sub(next)?);
        (start, value, run) = (i, v, 1);
    }
    if run > 0 {
        push_values(&mut out, value, run);
        next = start + run;
    }
    push_zeros(&mut out, REGISTERS - next);
    Some(out)
}

/// Sparse opcodes for `run` zero registers: ZERO (up to 64) or XZERO (up to 16,384).
fn push_zeros(out: &mut Vec<u8>, mut run: usize) {
    while run > 0 {
        if run > 64 {
            let len = run.min(16_384) - 1;
            out.push(0x40 | (len >> 8) as u8);
            out.push((len & 0xff) as u8);
            run -= len + 1;
        } else {
            out.push((run - 1) as u8);
            run = 0;
        }
    }
}

/// Sparse VAL opcodes for `run` registers of value `v` (1..=32), 4 per opcode.
fn push_values(out: &mut Vec<u8>, v: u8, mut run: usize) {
    while run > 0 {
        let len = run.min(4);
        out.push(0x80 | ((v - 1) << 2) | (len - 1) as u8);
        run -= len;
    }
}

fn header(encoding: u8, capacity: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(capacity);
    h.extend_from_slice(b"HYLL");
    h.push(encoding);
    h.extend_from_slice(&[0, 0, 0]);
    // Cached cardinality: zero, with the "invalid" bit set (card[7] & 0x80).
    h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x80]);
    h
}

fn dense_get(body: &[u8], reg: usize) -> u8 {
    let bit = reg * 6;
    let byte = bit / 8;
    let fb = bit & 7;
    let b0 = body[byte] as u16;
    let b1 = body.get(byte + 1).copied().unwrap_or(0) as u16;
    (((b0 >> fb) | (b1 << (8 - fb))) & 63) as u8
}

fn dense_set(body: &mut [u8], reg: usize, val: u8) {
    let bit = reg * 6;
    let byte = bit / 8;
    let fb = bit & 7;
    let v = val as u16;
    body[byte] &= !((63u16 << fb) as u8);
    body[byte] |= (v << fb) as u8;
    if let Some(next) = body.get_mut(byte + 1) {
        let fb8 = 8 - fb;
        *next &= !((63u16 >> fb8) as u8);
        *next |= (v >> fb8) as u8;
    }
}

/// Register index and value for one element, as Redis's `hllPatLen` (the
/// batch layer computes these per row, and keeps the maximum per register).
pub fn pattern(value: &[u8]) -> (usize, u8) {
    let hash = murmurhash64a(value, HASH_SEED);
    let index = (hash & (REGISTERS as u64 - 1)) as usize;
    let rest = (hash >> P) | (1u64 << Q);
    (index, rest.trailing_zeros() as u8 + 1)
}

/// MurmurHash64A as in Redis's `hyperloglog.c` (little-endian reads).
pub fn murmurhash64a(key: &[u8], seed: u64) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    let len = key.len();
    let mut h = seed ^ (len as u64).wrapping_mul(M);
    let mut chunks = key.chunks_exact(8);
    for chunk in &mut chunks {
        let mut k = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate() {
            h ^= (b as u64) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// Redis's `hllCount` from a histogram of register values.
fn estimate(histo: &[u32; 64]) -> u64 {
    let m = REGISTERS as f64;
    let q = Q as usize;
    let mut z = m * tau((m - histo[q + 1] as f64) / m);
    for j in (1..=q).rev() {
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

fn sigma(mut x: f64) -> f64 {
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

fn tau(mut x: f64) -> f64 {
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
            // Into a sparse and into a dense accumulator.
            for base in [sketch(5_000..5_010), sketch(5_000..9_000)] {
                let mut a = base.clone();
                u.merge_into(&mut a);
                let mut b = base;
                b.merge(&merged);
                assert_eq!(a.registers(), b.registers());
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
            let bytes = redis_bytes_of(&pairs);
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
            let back = Hll::from_redis_bytes(&bytes).unwrap();
            assert_eq!(back.registers(), truth, "{} registers", pairs.len());
            assert_eq!(back.to_redis_bytes(), bytes, "{} registers", pairs.len());
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
}
