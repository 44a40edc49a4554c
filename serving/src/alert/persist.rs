//! The alerts' state in Redis: who evaluates (a lease), every rule's state,
//! and the outbox of notifications not yet delivered (keys:
//! [`tally_core::keys::AlertKeys`]).
//!
//! One serving process at a time evaluates the rules and sends: the one
//! holding the lease `A:lease` (its random token, expiring after
//! [`lease_ttl`] unless renewed at each evaluation). The others stand by
//! and show the state the holder stores. Each call is one Lua script over
//! the three keys (one slot on a cluster), so what it writes is written
//! whole:
//!
//! - [`AlertStore::acquire`] takes or renews the lease, and returns the
//!   stored states and, when the lease was just taken, the stored outbox;
//! - [`AlertStore::persist`] writes every rule's state and appends the new
//!   notifications to the outbox stream, only while the caller holds the
//!   lease (a process that lost it writes nothing);
//! - entries of delivered notifications are deleted (`XDEL`) by whoever
//!   delivered them, lease or not.
//!
//! A stored state carries the rule's [`fingerprint`]: a rule whose
//! definition changed does not take the state of the old one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_core::config::AlertRule;
use tally_core::hll::murmurhash64a;
use tally_core::keys::AlertKeys;

use super::notification::Notification;
use super::Phase;
use crate::speed::{RedisReadError, RedisReader};

/// A rule's state as stored in `A:state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stored {
    /// The [`fingerprint`] of the rule this state belongs to.
    pub(crate) fp: String,
    pub(crate) phase: Phase,
    pub(crate) since_ms: Option<i64>,
    pub(crate) fired_ms: Option<i64>,
    pub(crate) episode: Option<String>,
    pub(crate) value: Option<f64>,
    pub(crate) last_eval_ms: Option<i64>,
    pub(crate) notifications: u64,
}

/// The fingerprint of a rule's whole definition (name, view, measure,
/// filter, window, comparison, threshold, `for`, webhook): any change
/// starts the rule afresh.
pub(crate) fn fingerprint(rule: &AlertRule) -> String {
    let json = serde_json::to_vec(rule).unwrap_or_default();
    format!("{:016x}", murmurhash64a(&json, 0xa1e7))
}

/// How long a lease lasts without renewal: three evaluation intervals, at
/// least 10 s. A process that stops releases it; one that dies hands over
/// after this long.
pub(crate) fn lease_ttl(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(10))
}

/// What [`AlertStore::acquire`] found.
#[derive(Debug)]
pub(crate) struct Acquired {
    pub(crate) lease: Lease,
    /// Rule name → stored state (unreadable entries left out).
    pub(crate) states: HashMap<String, Stored>,
    /// The stored outbox, oldest first, when the lease was just taken.
    pub(crate) outbox: Vec<(String, Notification)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lease {
    /// Another process holds it.
    Other,
    /// Held since the last call.
    Renewed,
    /// Taken now: the stored state is to be adopted.
    Taken,
}

/// The alerts' Redis keys, reached through the serving role's connection.
#[derive(Debug, Clone)]
pub(crate) struct AlertStore {
    redis: RedisReader,
    keys: AlertKeys,
    token: String,
    ttl_ms: u64,
}

/// Take the lease if free, renew it if ours; the stored states, and the
/// outbox when just taken. Deletes the entries named after the token and
/// ttl first.
const ACQUIRE: &str = r"
for i = 3, #ARGV do redis.call('XDEL', KEYS[3], ARGV[i]) end
local cur = redis.call('GET', KEYS[1])
local status = 0
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  status = 2
elseif cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  status = 1
end
local out = {}
if status == 2 then out = redis.call('XRANGE', KEYS[3], '-', '+') end
return {status, redis.call('HGETALL', KEYS[2]), out}
";

/// ARGV: token, ttl, rewrite (`1`: the outbox is replaced), then counted
/// lists: states (name, JSON pairs), rules to forget, entries to delete,
/// then the notifications to append. Writes only under the caller's lease.
const PERSIST: &str = r"
local i = 4
local n = tonumber(ARGV[i]); i = i + 1
local states = {}
for _ = 1, n do
  states[#states + 1] = ARGV[i]; states[#states + 1] = ARGV[i + 1]; i = i + 2
end
n = tonumber(ARGV[i]); i = i + 1
local forget = {}
for _ = 1, n do forget[#forget + 1] = ARGV[i]; i = i + 1 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('XDEL', KEYS[3], ARGV[i]); i = i + 1 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0, {}} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if #states > 0 then redis.call('HSET', KEYS[2], unpack(states)) end
if #forget > 0 then redis.call('HDEL', KEYS[2], unpack(forget)) end
if ARGV[3] == '1' then redis.call('DEL', KEYS[3]) end
local ids = {}
for j = i, #ARGV do ids[#ids + 1] = redis.call('XADD', KEYS[3], '*', 'n', ARGV[j]) end
return {1, ids}
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// What [`AlertStore::persist`] writes.
#[derive(Debug, Default)]
pub(crate) struct Write {
    /// Rule name → state.
    pub(crate) states: Vec<(String, Stored)>,
    /// Stored rules no longer configured.
    pub(crate) forget: Vec<String>,
    /// Entries of notifications done with.
    pub(crate) done: Vec<String>,
    /// Replace the stored outbox with `append` (else append to it).
    pub(crate) rewrite: bool,
    pub(crate) append: Vec<Notification>,
}

impl AlertStore {
    pub(crate) fn new(redis: RedisReader, interval: Duration) -> AlertStore {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let keys = redis.layout().alerts();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let token = format!(
            "{}-{nanos:x}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        AlertStore {
            redis,
            keys,
            token,
            ttl_ms: lease_ttl(interval).as_millis() as u64,
        }
    }

    fn script(&self, body: &str) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(body)
            .arg(3)
            .arg(self.keys.lease())
            .arg(self.keys.state())
            .arg(self.keys.outbox())
            .arg(&self.token)
            .arg(self.ttl_ms);
        pipe
    }

    /// Take or renew the lease, deleting the `done` entries first.
    pub(crate) async fn acquire(&self, done: &[String]) -> Result<Acquired, RedisReadError> {
        let mut pipe = self.script(ACQUIRE);
        for id in done {
            pipe.arg(id);
        }
        type Raw = (i64, HashMap<String, String>, Vec<(String, Vec<String>)>);
        let ((status, raw_states, raw_out),): (Raw,) = self.redis.query(&pipe).await?;
        let lease = match status {
            2 => Lease::Taken,
            1 => Lease::Renewed,
            _ => Lease::Other,
        };
        let states = raw_states
            .into_iter()
            .filter_map(|(name, json)| match serde_json::from_str(&json) {
                Ok(s) => Some((name, s)),
                Err(e) => {
                    tracing::warn!(alert = %name, error = %e, "stored alert state unreadable; the rule starts ok");
                    None
                }
            })
            .collect();
        let outbox = raw_out
            .into_iter()
            .filter_map(|(id, fields)| {
                let json = fields.chunks(2).find(|f| f[0] == "n")?.get(1)?;
                match serde_json::from_str(json) {
                    Ok(n) => Some((id, n)),
                    Err(e) => {
                        tracing::warn!(entry = %id, error = %e, "stored alert notification unreadable; skipped");
                        None
                    }
                }
            })
            .collect();
        Ok(Acquired {
            lease,
            states,
            outbox,
        })
    }

    /// Write `w` under the lease: the entry ids of `w.append`, in order, or
    /// `None` when the lease is not ours (nothing was written but the
    /// deletions).
    pub(crate) async fn persist(&self, w: &Write) -> Result<Option<Vec<String>>, RedisReadError> {
        let mut pipe = self.script(PERSIST);
        pipe.arg(if w.rewrite { "1" } else { "0" });
        pipe.arg(w.states.len());
        for (name, s) in &w.states {
            pipe.arg(name)
                .arg(serde_json::to_string(s).unwrap_or_default());
        }
        pipe.arg(w.forget.len()).arg(&w.forget);
        pipe.arg(w.done.len()).arg(&w.done);
        for n in &w.append {
            pipe.arg(serde_json::to_string(n).unwrap_or_default());
        }
        let ((ok, ids),): ((i64, Vec<String>),) = self.redis.query(&pipe).await?;
        Ok((ok == 1).then_some(ids))
    }

    /// Delete the entries of notifications done with.
    pub(crate) async fn delete(&self, ids: &[String]) -> Result<(), RedisReadError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("XDEL").arg(self.keys.outbox()).arg(ids);
        let _: (i64,) = self.redis.query(&pipe).await?;
        Ok(())
    }

    /// Give the lease up, if ours: another process takes over at once.
    pub(crate) async fn release(&self) -> Result<(), RedisReadError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(self.keys.lease())
            .arg(&self.token);
        let _: (i64,) = self.redis.query(&pipe).await?;
        Ok(())
    }
}
