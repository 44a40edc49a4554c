//! The counter log: the new value of every counter field a flush wrote, so
//! that a reader keeping a copy of a slice learns the values with the
//! versions it reads first, instead of asking for them in a second round
//! trip that waits behind the next flush's script.
//!
//! A [`crate::slice_log`] per slice of a view with count, sum, min or max
//! measures ([`crate::keys::Keys::counter_log`]). Unlike the sketch logs
//! the body is written by the apply script, which alone learns the values
//! (`HINCRBY` and `HINCRBYFLOAT` return them): one line per field,
//! `{counter field}\t{value}\n` ([`crate::keys::CounterField`]; a group's
//! JSON text holds no raw tab or newline). The value is Redis's text of
//! the field, or [`UNKNOWN`] where the script cannot write it exactly (an
//! integer past 2^53, which Lua holds as a double). A min or max that a
//! flush did not move has no line; an integer sum's two fields (the value
//! and its carry) are written together.
//!
//! Guarantee: [`values_through`] returns each field's last value only
//! when the entries chain from the reader's version through the slice's,
//! every line parsing and no value unknown; otherwise `None`, and the
//! reader reads the counters whole.

use std::collections::HashMap;

use crate::keys::CounterField;
use crate::slice_log::bodies_through;

/// The value of a field the script could not write exactly.
pub const UNKNOWN: &str = "?";

/// Each counter field's last value in the entries (members with their
/// scores, in score order) that chain from version `since`, when they
/// reach `until` at least; `None` otherwise. Values past `until` are
/// included: a counter as of a later flush replaces the older value, and
/// the cells written after `until` are read again from `until` on.
pub fn values_through(
    entries: &[(Vec<u8>, u64)],
    since: u64,
    until: u64,
) -> Option<HashMap<&str, &str>> {
    let mut out = HashMap::new();
    for body in bodies_through(entries, since, until)? {
        for line in body.lines() {
            let (field, value) = line.split_once('\t')?;
            if value == UNKNOWN {
                return None;
            }
            CounterField::parse(field)?;
            out.insert(field, value);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prev: u64, lines: &[(&str, &str)]) -> Vec<u8> {
        let mut body = format!("{prev}\n");
        for (f, v) in lines {
            body.push_str(&format!("{f}\t{v}\n"));
        }
        body.into_bytes()
    }

    const C: &str = r#"60000|n|c|["/a"]"#;
    const S: &str = r#"60000|bytes|i|["/a"]"#;

    #[test]
    fn the_last_value_of_each_field_wins() {
        let entries = vec![
            (entry(4, &[(C, "3"), (S, "10")]), 6),
            (entry(6, &[]), 9),
            (entry(9, &[(C, "5")]), 12),
        ];
        let got = values_through(&entries, 4, 9).expect("a chain through 9");
        assert_eq!(got[C], "5");
        assert_eq!(got[S], "10");
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn a_gap_a_bad_line_or_an_unknown_value_reads_whole() {
        let entries = vec![(entry(4, &[(C, "3")]), 6), (entry(7, &[(C, "4")]), 9)];
        assert!(values_through(&entries, 4, 9).is_none());
        assert!(values_through(&entries[..1], 4, 6).is_some());
        let unknown = vec![(entry(4, &[(C, UNKNOWN)]), 6)];
        assert!(values_through(&unknown, 4, 6).is_none());
        for bad in ["no tab", "60000|n|z|[\"/a\"]\t3"] {
            let e = format!("4\n{bad}\n").into_bytes();
            assert!(values_through(&[(e, 6)], 4, 6).is_none(), "{bad}");
        }
    }
}
