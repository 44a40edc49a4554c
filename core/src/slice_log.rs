//! A slice's change log: one entry per apply-script call that wrote the
//! slice, chained by versions, so that a reader keeping a copy of the slice
//! learns what changed since the version it holds without reading it
//! whole. Three logs use it: the quantile log ([`crate::quantile::delta_log`],
//! what each flush added to the quantile sketches), the sketch log
//! ([`crate::hll::sketch_log`], which distinct sketches each flush changed)
//! and the counter log ([`crate::counter_log`], the counters' new values).
//!
//! One sorted set per slice and log, one member per call, scored by the
//! call's version, the last [`LOG_LEN`] kept. A member is `{prev}\n{body}`:
//! `prev` is the slice's version before the call (`0`: none), which lets a
//! reader tell a complete run of entries from one with a gap (trimmed,
//! expired, lost, or a call by a writer that kept no log). The speed layer
//! writes the body; the script prepends `prev`, which only it knows.
//!
//! Guarantee: [`bodies_between`] returns the bodies only when the entries
//! chain from the reader's version to the slice's with no gap
//! ([`bodies_through`]: at least to the slice's, and on as far as they
//! chain); otherwise the reader reads what it needs whole.

/// Entries kept per slice and log. A reader syncs every 100 ms or so and a
/// flush writes a slice at most once, so this is seconds of flushes; a
/// reader further behind reads whole.
pub const LOG_LEN: usize = 64;

/// The bodies of `entries` (members with their scores, in score order, as
/// `ZRANGEBYSCORE … WITHSCORES` returns them), oldest first, when they
/// chain from version `since` to `until` with no gap; `None` otherwise
/// (a member that is not text included).
pub fn bodies_between(entries: &[(Vec<u8>, u64)], since: u64, until: u64) -> Option<Vec<&str>> {
    let mut bodies = Vec::with_capacity(entries.len());
    let mut at = since;
    for (member, version) in entries {
        let text = std::str::from_utf8(member).ok()?;
        let (prev, body) = text.split_once('\n').unwrap_or((text, ""));
        if prev.parse::<u64>().ok()? != at || *version <= at {
            return None;
        }
        at = *version;
        bodies.push(body);
    }
    (at == until).then_some(bodies)
}

/// Like [`bodies_between`], but the chain may go on past `until`: the
/// bodies of every entry that chains from `since`, when the chain reaches
/// `until` at least. For values that a newer read may replace (a counter's
/// value as of a later flush is as good as the one as of `until`).
pub fn bodies_through(entries: &[(Vec<u8>, u64)], since: u64, until: u64) -> Option<Vec<&str>> {
    let mut bodies = Vec::with_capacity(entries.len());
    let mut at = since;
    for (member, version) in entries {
        let Some(body) = std::str::from_utf8(member).ok().and_then(|text| {
            let (prev, body) = text.split_once('\n').unwrap_or((text, ""));
            (prev.parse::<u64>().ok()? == at && *version > at).then_some(body)
        }) else {
            break;
        };
        at = *version;
        bodies.push(body);
    }
    (at >= until).then_some(bodies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prev: u64, body: &str) -> Vec<u8> {
        format!("{prev}\n{body}").into_bytes()
    }

    #[test]
    fn a_chain_from_the_readers_version_to_the_slices_gives_its_bodies_in_order() {
        let entries = vec![
            (entry(4, "a\n"), 6),
            (entry(6, ""), 9),
            (entry(9, "b\n"), 12),
        ];
        assert_eq!(
            bodies_between(&entries, 4, 12),
            Some(vec!["a\n", "", "b\n"])
        );
        assert_eq!(bodies_between(&entries[..1], 4, 6), Some(vec!["a\n"]));
        assert_eq!(bodies_between(&[], 9, 9), Some(vec![]));
    }

    #[test]
    fn a_gap_or_an_overrun_gives_nothing() {
        let entries = vec![(entry(4, "a\n"), 6), (entry(7, "b\n"), 9)];
        // Version 7's entry is missing (trimmed): the chain breaks.
        assert_eq!(bodies_between(&entries, 4, 9), None);
        // The first entry does not start at the reader's version.
        assert_eq!(bodies_between(&entries[1..], 6, 9), None);
        // The entries end before the slice's version.
        assert_eq!(bodies_between(&entries[..1], 4, 9), None);
        // No entry at all while the slice moved on (the log expired).
        assert_eq!(bodies_between(&[], 4, 9), None);
        assert_eq!(bodies_between(&[(b"x\nbody".to_vec(), 6)], 4, 6), None);
        assert_eq!(bodies_between(&[(vec![0xff, b'\n'], 6)], 4, 6), None);
    }

    #[test]
    fn a_chain_through_the_slices_version_goes_on_as_far_as_it_chains() {
        let entries = vec![
            (entry(4, "a\n"), 6),
            (entry(6, "b\n"), 9),
            (entry(10, "c\n"), 12),
        ];
        assert_eq!(bodies_through(&entries, 4, 6), Some(vec!["a\n", "b\n"]));
        assert_eq!(bodies_through(&entries, 4, 9), Some(vec!["a\n", "b\n"]));
        // The gap before version 12 ends the chain short of it.
        assert_eq!(bodies_through(&entries, 4, 12), None);
        assert_eq!(bodies_through(&entries[1..], 4, 9), None);
        assert_eq!(bodies_through(&[], 9, 9), Some(vec![]));
    }
}
