//! Redis must keep what the speed layer writes: checked at start.
//!
//! The fencing script trusts that a partition's offset and the counters it
//! covers live or vanish together. A Redis that evicts keys breaks that: an
//! evicted offset makes the partition rebuild counters that are still there
//! (counted twice); an evicted counter under a kept offset is gone without a
//! trace. So the speed layer starts only on `maxmemory-policy noeviction`
//! (Redis then answers writes past `maxmemory` with an error, which the
//! flusher retries), or on the one policy `redis.accept_maxmemory_policy`
//! names, or on anything if it says `"any"`. On a Redis Cluster every node
//! is checked, replicas included.

use std::collections::HashMap;

use tally_core::config::RedisConfig;

use crate::error::SpeedError;
use crate::redis_con::RedisCon;

/// Check every node's `maxmemory-policy` against the config (on a cluster
/// replicas too: one may be promoted).
pub(crate) async fn check(cfg: &RedisConfig, con: &mut RedisCon) -> Result<(), SpeedError> {
    let accepted = cfg.accept_maxmemory_policy.as_deref();
    if accepted == Some("any") {
        return Ok(());
    }
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("GET").arg("maxmemory-policy");
    let replies = match con.every_node(cmd).await {
        Ok(r) => r,
        Err(e) => return Err(SpeedError::PolicyUnknown(e.to_string())),
    };
    for (node, reply) in replies {
        let found: Result<HashMap<String, String>, _> = redis::from_redis_value(reply);
        let policy = match found {
            Ok(mut found) => match found.remove("maxmemory-policy") {
                Some(p) => p,
                None => {
                    return Err(SpeedError::PolicyUnknown(format!(
                        "{node}: no such setting"
                    )))
                }
            },
            Err(e) => return Err(SpeedError::PolicyUnknown(format!("{node}: {e}"))),
        };
        if policy == "noeviction" || accepted == Some(policy.as_str()) {
            if policy != "noeviction" {
                tracing::warn!(%policy, %node, "Redis may evict keys (accepted by redis.accept_maxmemory_policy): counts may double or vanish if it does");
            }
            continue;
        }
        return Err(SpeedError::Evicting { policy });
    }
    Ok(())
}
