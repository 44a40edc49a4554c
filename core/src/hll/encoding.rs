//! Redis's byte encodings of a sketch (what `GET` returns): the 16-byte
//! header, the dense 6-bit registers and the sparse opcodes (ZERO, XZERO,
//! VAL), written byte for byte as Redis writes them.

use super::{DENSE_LEN, HEADER_LEN, REGISTERS, SPARSE_MAX_BYTES, SPARSE_VAL_MAX};

/// Append the Redis encoding of a sketch given as its non-zero registers
/// `(index << 8) | value` (as [`super::Hll::sparse_registers`] gives them),
/// sorted by index, each once, to `out`: byte for byte what
/// [`super::Hll::to_redis_bytes`] writes for those registers, in time
/// proportional to the number of registers set. The batch layer writes a
/// million of these into one column buffer, with no allocation per sketch.
pub fn append_redis_bytes(registers: &[u32], out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(sparse_len_bound(registers.len()));
    let pairs = registers.iter().map(|&e| ((e >> 8) as usize, e as u8));
    if push_sparse(out, pairs) && out.len() - start <= SPARSE_MAX_BYTES {
        return;
    }
    out.truncate(start);
    push_header(out, 0);
    let body = out.len();
    out.resize(start + DENSE_LEN, 0);
    for &e in registers {
        dense_set(&mut out[body..], (e >> 8) as usize, (e as u8).min(63));
    }
}

/// The sparse encoding of non-zero registers `(index, value)` sorted by
/// index, or `None` if a value is over 32 (or the indexes are not sorted).
/// `set` (about how many registers are set) sizes the buffer: a sketch kept
/// alone must not hold a dense-sized allocation (the batch layer once kept a
/// million, and its peak RSS went from 1.5 to 6 GB), nor grow one: a
/// register costs at most three bytes (the XZERO before its VAL) and the
/// zeros after the last one two ([`sparse_len_bound`]).
pub(super) fn sparse_of(
    set: usize,
    registers: impl Iterator<Item = (usize, u8)>,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(sparse_len_bound(set));
    push_sparse(&mut out, registers).then_some(out)
}

/// Append the sparse encoding of `registers` (as [`sparse_of`] takes them)
/// to `out`; false, with `out` left partly written, if a value is over 32
/// or the indexes are not sorted.
fn push_sparse(out: &mut Vec<u8>, registers: impl Iterator<Item = (usize, u8)>) -> bool {
    push_header(out, 1);
    let mut next = 0usize; // first register not yet encoded
    let (mut start, mut value, mut run) = (0usize, 0u8, 0usize);
    for (i, v) in registers {
        if v > SPARSE_VAL_MAX {
            return false;
        }
        if run > 0 && i == start + run && v == value {
            run += 1;
            continue;
        }
        if run > 0 {
            push_values(out, value, run);
            next = start + run;
        }
        // Out of order: not encodable here (the dense encoding takes any order).
        let Some(zeros) = i.checked_sub(next) else {
            return false;
        };
        push_zeros(out, zeros);
        (start, value, run) = (i, v, 1);
    }
    if run > 0 {
        push_values(out, value, run);
        next = start + run;
    }
    push_zeros(out, REGISTERS - next);
    true
}

/// The most bytes the sparse encoding of `set` registers takes.
pub(super) fn sparse_len_bound(set: usize) -> usize {
    HEADER_LEN + 3 * set + 2
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

pub(super) fn header(encoding: u8, capacity: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(capacity);
    push_header(&mut h, encoding);
    h
}

fn push_header(out: &mut Vec<u8>, encoding: u8) {
    out.extend_from_slice(b"HYLL");
    out.push(encoding);
    out.extend_from_slice(&[0, 0, 0]);
    // Cached cardinality: zero, with the "invalid" bit set (card[7] & 0x80).
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x80]);
}

pub(super) fn dense_get(body: &[u8], reg: usize) -> u8 {
    let bit = reg * 6;
    let byte = bit / 8;
    let fb = bit & 7;
    let b0 = body[byte] as u16;
    let b1 = body.get(byte + 1).copied().unwrap_or(0) as u16;
    (((b0 >> fb) | (b1 << (8 - fb))) & 63) as u8
}

pub(super) fn dense_set(body: &mut [u8], reg: usize, val: u8) {
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
