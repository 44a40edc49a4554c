//! Redis must keep what the speed layer writes: checked at start.
//!
//! The fencing script trusts that a partition's offset and the counters it
//! covers live or vanish together. A Redis that evicts keys breaks that: an
//! evicted offset makes the partition rebuild counters that are still there
//! (counted twice); an evicted counter under a kept offset is gone without a
//! trace. So the speed layer starts only on `maxmemory-policy noeviction`
//! (Redis then answers writes past `maxmemory` with an error, which the
//! flusher retries), or on the one policy `redis.accept_maxmemory_policy`
//! names, or on anything if it says `"any"`.

use std::collections::HashMap;

use tally_core::config::RedisConfig;

use crate::error::SpeedError;

/// Check the server's `maxmemory-policy` against the config.
pub(crate) async fn check(cfg: &RedisConfig) -> Result<(), SpeedError> {
    let accepted = cfg.accept_maxmemory_policy.as_deref();
    if accepted == Some("any") {
        return Ok(());
    }
    let client = redis::Client::open(cfg.url.as_str())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let reply: Result<HashMap<String, String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut con)
        .await;
    let policy = match reply {
        Ok(mut found) => match found.remove("maxmemory-policy") {
            Some(p) => p,
            None => return Err(SpeedError::PolicyUnknown("no such setting".into())),
        },
        Err(e) => return Err(SpeedError::PolicyUnknown(e.to_string())),
    };
    if policy == "noeviction" || accepted == Some(policy.as_str()) {
        if policy != "noeviction" {
            tracing::warn!(%policy, "Redis may evict keys (accepted by redis.accept_maxmemory_policy): counts may double or vanish if it does");
        }
        return Ok(());
    }
    Err(SpeedError::Evicting { policy })
}
