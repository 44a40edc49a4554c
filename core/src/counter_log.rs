//! The counter log: the new value of every counter field a flush wrote, so
//! that a reader keeping a copy of a slice learns the values with the
//! versions it reads first, instead of asking for them in a second round
//! trip that waits behind the next flush's script.
//!
//! A [`crate::slice_log`] per slice of a view with count, sum, min or max
//! measures ([`crate::keys::Keys::counter_log`]). The body has two parts.
//! The speed layer writes the counter fields the call writes, one line
//! each, in the order of its ops ([`crate::keys::CounterField`]; a group's
//! JSON text holds no raw newline); the apply script, which alone learns
//! the values (`HINCRBY` and `HINCRBYFLOAT` return them), puts one line
//! before them: the fields' new values in the same order, separated by
//! tabs. So the body is `{v1}\t{v2}…\n{field1}\n{field2}\n…`, and the
//! script's work per field is one value, not a line. A value is Redis's
//! text of the field, [`UNCHANGED`] for a min or max the call did not
//! move, or [`UNKNOWN`] where the script cannot write it exactly (an
//! integer past 2^53, which Lua holds as a double). An integer sum's two
//! fields (the value and its carry) are written together.
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

/// The value of a min or max field the call left as it was.
pub const UNCHANGED: &str = "=";

/// Append one counter field the call writes to the fields part of a log
/// entry's body (the speed layer, in the order of the call's ops).
pub fn write_field(fields: &mut String, field: &str) {
    fields.push_str(field);
    fields.push('\n');
}

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
        let (values, fields) = body.split_once('\n').unwrap_or((body, ""));
        if fields.is_empty() != values.is_empty() {
            return None;
        }
        let mut values = values.split('\t').filter(|_| !fields.is_empty());
        for field in fields.lines() {
            match values.next()? {
                UNKNOWN => return None,
                UNCHANGED => {}
                value => {
                    CounterField::parse(field)?;
                    out.insert(field, value);
                }
            }
        }
        if values.next().is_some() {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prev: u64, lines: &[(&str, &str)]) -> Vec<u8> {
        let values: Vec<&str> = lines.iter().map(|(_, v)| *v).collect();
        let mut fields = String::new();
        lines.iter().for_each(|(f, _)| write_field(&mut fields, f));
        format!("{prev}\n{}\n{fields}", values.join("\t")).into_bytes()
    }

    const C: &str = r#"60000|n|c|["/a"]"#;
    const S: &str = r#"60000|bytes|i|["/a"]"#;
    const M: &str = r#"60000|shortest|n|["/a"]"#;

    #[test]
    fn the_last_value_of_each_field_wins() {
        let entries = vec![
            (entry(4, &[(C, "3"), (S, "10"), (M, "1.5")]), 6),
            (entry(6, &[]), 9),
            (entry(9, &[(C, "5"), (M, UNCHANGED)]), 12),
        ];
        let got = values_through(&entries, 4, 9).expect("a chain through 9");
        assert_eq!(got[C], "5");
        assert_eq!(got[S], "10");
        // A min the last call did not move keeps its earlier value.
        assert_eq!(got[M], "1.5");
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn a_gap_a_bad_line_or_an_unknown_value_reads_whole() {
        let entries = vec![(entry(4, &[(C, "3")]), 6), (entry(7, &[(C, "4")]), 9)];
        assert!(values_through(&entries, 4, 9).is_none());
        assert!(values_through(&entries[..1], 4, 6).is_some());
        let unknown = vec![(entry(4, &[(C, UNKNOWN)]), 6)];
        assert!(values_through(&unknown, 4, 6).is_none());
        // A field that does not parse; more or fewer values than fields.
        for bad in [
            "3\n60000|n|z|[\"/a\"]\n",
            "3\t4\n60000|n|c|[\"/a\"]\n",
            "3\n60000|n|c|[\"/a\"]\n60000|n|c|[\"/b\"]\n",
        ] {
            let e = format!("4\n{bad}").into_bytes();
            assert!(values_through(&[(e, 6)], 4, 6).is_none(), "{bad}");
        }
    }
}
