//! How Redis encodes the quantile sketches' hashes: checked at start, and
//! advised on, never changed.
//!
//! A quantile sketch is a Redis hash with a field per occupied bucket (up
//! to about 115 per decade its values span). Redis keeps a hash of up to
//! `hash-max-listpack-entries` fields as a listpack, which every `HINCRBY`
//! scans field by field, and a larger one as a hash table. The shipped
//! redis.conf sets 128, but a server started without it (`redis-server`
//! with no file, the `redis:7` image) runs the compiled default, 512; there
//! the apply script's quantile writes cost 13.7 ms of a replayed 100,000
//! events/s flush instead of 9.4 ms (BENCHMARKS.md, Freshness, 12-06).
//! Answers are the same either way, and a server's settings are its
//! operator's (other applications may share it), so the speed layer only
//! warns, naming the setting and the fix. Tally's own scripts start Redis
//! with [`ADVISED_ENTRIES`].

use std::collections::HashMap;

use crate::redis_con::RedisCon;

/// The largest `hash-max-listpack-entries` that keeps a busy sketch's
/// `HINCRBY` off a long listpack scan.
pub(crate) const ADVISED_ENTRIES: u64 = 128;

const SETTING: &str = "hash-max-listpack-entries";

/// Warn for every node whose setting is above [`ADVISED_ENTRIES`]. A node
/// that does not answer (`CONFIG` refused) is left alone: this is advice.
pub(crate) async fn advise(con: &mut RedisCon) {
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("GET").arg(SETTING);
    let replies = match con.every_node(cmd).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read Redis's {SETTING}");
            return;
        }
    };
    for (node, reply) in replies {
        let found: Option<HashMap<String, String>> = redis::from_redis_value(reply).ok();
        let value = found
            .as_ref()
            .and_then(|f| f.get(SETTING))
            .map(String::as_str);
        if let Some(advice) = advice(value) {
            tracing::warn!(%node, "{advice}");
        }
    }
}

/// What to tell the operator about a node's setting, if anything.
fn advice(value: Option<&str>) -> Option<String> {
    let entries: u64 = value?.parse().ok()?;
    (entries > ADVISED_ENTRIES).then(|| {
        format!(
            "Redis's {SETTING} is {entries}: each quantile bucket written scans up to that many \
             fields of its sketch. Set `CONFIG SET {SETTING} {ADVISED_ENTRIES}` (and in redis.conf) \
             for cheaper flushes"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_default_is_advised_against_with_the_fix() {
        let advice = advice(Some("512")).expect("512 is above the advice");
        assert!(
            advice.contains("hash-max-listpack-entries is 512"),
            "{advice}"
        );
        assert!(
            advice.contains("CONFIG SET hash-max-listpack-entries 128"),
            "{advice}"
        );
    }

    #[test]
    fn the_shipped_setting_and_smaller_ones_pass() {
        assert_eq!(advice(Some("128")), None);
        assert_eq!(advice(Some("32")), None);
    }

    #[test]
    fn a_setting_that_cannot_be_read_is_left_alone() {
        assert_eq!(advice(None), None);
        assert_eq!(advice(Some("")), None);
        assert_eq!(advice(Some("lots")), None);
    }
}
