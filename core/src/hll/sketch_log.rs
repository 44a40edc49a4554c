//! The sketch log: what each flush added to a slice's distinct sketches, so
//! that a reader keeping a copy of the slice merges the registers a flush
//! set instead of re-reading every changed sketch whole.
//!
//! A [`crate::slice_log`] per slice of a view with distinct measures
//! ([`crate::keys::Keys::sketch_log`]). An entry's body holds one line per
//! sketch the call added to, `{bucket_ms}|{measure}|{group_json}\t{entry},…`
//! ([`SketchField`]; each entry a register as [`Hll::entries`] gives it,
//! `(index << 8) | value`, in hexadecimal, by index), each line ending in
//! `\n`. The speed layer writes it while it encodes the deltas
//! ([`write_line`]): the sketch of the values a flush adds to a cell, which
//! is what `PFADD` of them merges into Redis's. Merging it into a copy that
//! is at least as new as the flush before gives Redis's sketch after it
//! (registers only ever rise, and a register merged twice is merged once).
//!
//! Guarantee: [`added_between`] returns the merged sketches only when the
//! entries chain from the reader's version to the slice's, every line
//! parsing; otherwise `None`, and the reader reads the sketches whole.
//!
//! Why: the serving layer re-read every changed cell's sketches whole, a
//! dense one 12 KiB, about 20 MB a second at 100,000 events/s; a flush sets
//! a few registers of each.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::Hll;
use crate::keys::SketchField;
use crate::slice_log::bodies_between;

/// Append the line of one sketch's delta (`field` a [`SketchField`]) to a
/// log entry's body.
pub fn write_line(body: &mut String, field: &str, delta: &Hll) {
    body.push_str(field);
    body.push('\t');
    for (i, e) in delta.entries().into_iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(body, "{e:x}");
    }
    body.push('\n');
}

/// The deltas of `entries` (members with their scores, in score order, as
/// `ZRANGEBYSCORE … WITHSCORES` returns them) merged per sketch, keyed by
/// [`SketchField`] text, when they chain from version `since` to `until`
/// with no gap; `None` otherwise.
pub fn added_between(
    entries: &[(Vec<u8>, u64)],
    since: u64,
    until: u64,
) -> Option<HashMap<String, Hll>> {
    let mut out: HashMap<String, Hll> = HashMap::new();
    let mut registers: Vec<u32> = Vec::new();
    for body in bodies_between(entries, since, until)? {
        for line in body.lines() {
            let (field, list) = line.rsplit_once('\t')?;
            SketchField::parse(field)?;
            registers.clear();
            for e in list.split(',').filter(|e| !e.is_empty()) {
                let e = u32::from_str_radix(e, 16).ok()?;
                // In order, one per register, each a valid register.
                if registers.last().is_some_and(|&l| l >> 8 >= e >> 8)
                    || (e >> 8) as usize >= super::REGISTERS
                    || e & 0xff == 0
                {
                    return None;
                }
                registers.push(e);
            }
            out.entry(field.to_owned())
                .or_default()
                .merge_registers(&registers);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch(values: &[&str]) -> Hll {
        let mut h = Hll::new();
        values.iter().for_each(|v| h.add(v.as_bytes()));
        h
    }

    fn entry(prev: u64, lines: &[(&str, &Hll)]) -> Vec<u8> {
        let mut body = format!("{prev}\n");
        for (f, s) in lines {
            write_line(&mut body, f, s);
        }
        body.into_bytes()
    }

    const A: &str = r#"60000|users|["/a"]"#;
    const B: &str = r#"120000|users|["/b\tc"]"#;

    #[test]
    fn a_chain_of_entries_merges_its_deltas_per_sketch() {
        let many: Vec<String> = (0..5_000).map(|i| format!("u{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let (a1, a2, b) = (sketch(&["x", "y"]), sketch(&many), sketch(&["z"]));
        let entries = vec![
            (entry(4, &[(A, &a1)]), 6),
            (entry(6, &[]), 9),
            (entry(9, &[(A, &a2), (B, &b)]), 12),
        ];
        let got = added_between(&entries, 4, 12).expect("a complete chain");
        let mut want = a1.clone();
        want.merge(&a2);
        assert_eq!(got[A].entries(), want.entries());
        assert_eq!(got[B].entries(), b.entries());
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn a_gap_or_a_bad_line_reads_whole() {
        let s = sketch(&["x"]);
        let entries = vec![(entry(4, &[(A, &s)]), 6), (entry(7, &[(A, &s)]), 9)];
        assert!(added_between(&entries, 4, 9).is_none());
        assert!(added_between(&entries[..1], 4, 6).is_some());
        for bad in [
            "not a line",
            "60000|users|[\"/a\"]\tzz",
            "60000|users|[\"/a\"]\t300,200",
        ] {
            let e = format!("4\n{bad}\n").into_bytes();
            assert!(added_between(&[(e, 6)], 4, 6).is_none(), "{bad}");
        }
    }
}
