//! The quantile delta log: what each flush added to a slice's quantile
//! sketches, so that a reader keeping a copy of the slice adds the changes
//! instead of reading every changed sketch whole.
//!
//! A [`crate::slice_log`] per slice ([`crate::keys::Keys::quantile_log`]).
//! An entry's body holds one line per quantile sketch the call added to,
//! `{bucket_ms}|{measure}|{group_json}\t{code}:{count},…` ([`SketchField`],
//! [`crate::quantile::Bucket::code`]), each line ending in `\n`; the speed
//! layer writes it while it encodes the deltas ([`write_line`]).
//!
//! Guarantee: [`deltas_between`] returns the summed deltas only when the
//! entries chain from the reader's version to the slice's, every line
//! parsing; otherwise `None`, and the reader reads the sketches whole.
//!
//! Why a log and not a re-read: a busy cell's sketch holds hundreds of
//! buckets, a flush adds a few, and the serving layer re-read each changed
//! sketch with `HGETALL` (its largest cost, and Redis's, at 60,000 events/s).

use std::collections::HashMap;
use std::fmt::Write as _;

use super::QuantileSketch;
use crate::keys::SketchField;

/// Append the line of one sketch's delta (`field` a [`SketchField`]) to a
/// log entry's body.
pub fn write_line(body: &mut String, field: &str, delta: &QuantileSketch) {
    body.push_str(field);
    body.push('\t');
    for (i, (code, n)) in delta.by_code().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(body, "{code}:{n}");
    }
    body.push('\n');
}

/// The deltas of `entries` (members with their scores, in score order, as
/// `ZRANGEBYSCORE … WITHSCORES` returns them) summed per sketch, keyed by
/// [`SketchField`] text, when they chain from version `since` to `until`
/// with no gap; `None` otherwise.
pub fn deltas_between(
    entries: &[(Vec<u8>, u64)],
    since: u64,
    until: u64,
) -> Option<HashMap<String, QuantileSketch>> {
    let mut out: HashMap<String, QuantileSketch> = HashMap::new();
    for body in crate::slice_log::bodies_between(entries, since, until)? {
        for line in body.lines() {
            let (field, codes) = line.rsplit_once('\t')?;
            SketchField::parse(field)?;
            let sketch = out.entry(field.to_owned()).or_default();
            for pair in codes.split(',').filter(|p| !p.is_empty()) {
                let (c, n) = pair.split_once(':')?;
                sketch.add_code(c.parse().ok()?, n.parse().ok()?);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch(values: &[f64]) -> QuantileSketch {
        let mut s = QuantileSketch::new();
        values.iter().for_each(|&v| s.add(v));
        s
    }

    fn entry(prev: u64, lines: &[(&str, &QuantileSketch)]) -> Vec<u8> {
        let mut body = format!("{prev}\n");
        for (f, s) in lines {
            write_line(&mut body, f, s);
        }
        body.into_bytes()
    }

    const A: &str = r#"60000|latency|["/a"]"#;
    const B: &str = r#"60000|latency|["/b\tc"]"#;

    #[test]
    fn a_chain_of_entries_sums_its_deltas_per_sketch() {
        let (a1, a2, b) = (
            sketch(&[1.0, 0.0, -3.0]),
            sketch(&[1.0, 250.0]),
            sketch(&[7.0]),
        );
        let entries = vec![
            (entry(4, &[(A, &a1)]), 6),
            (entry(6, &[]), 9),
            (entry(9, &[(A, &a2), (B, &b)]), 12),
        ];
        let got = deltas_between(&entries, 4, 12).expect("a complete chain");
        assert_eq!(got[A], sketch(&[1.0, 0.0, -3.0, 1.0, 250.0]));
        assert_eq!(got[B], b);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn a_gap_an_overrun_or_a_bad_line_reads_whole() {
        let s = sketch(&[1.0]);
        let entries = vec![(entry(4, &[(A, &s)]), 6), (entry(7, &[(A, &s)]), 9)];
        // Version 7's entry is missing (trimmed): the chain breaks.
        assert!(deltas_between(&entries, 4, 9).is_none());
        // The first entry does not start at the reader's version.
        assert!(deltas_between(&entries[1..], 6, 9).is_none());
        // The entries end before the slice's version.
        assert!(deltas_between(&entries[..1], 4, 9).is_none());
        // No entry at all while the slice moved on (the log expired).
        assert!(deltas_between(&[], 4, 9).is_none());
        assert!(deltas_between(&[(b"4\nnot a line\n".to_vec(), 6)], 4, 6).is_none());
        assert!(deltas_between(&[(format!("4\n{A}\t1:x\n").into_bytes(), 6)], 4, 6).is_none());
        assert_eq!(
            deltas_between(&entries[..1], 4, 6).map(|d| d.len()),
            Some(1)
        );
    }
}
