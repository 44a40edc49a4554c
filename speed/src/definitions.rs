//! A view whose definition changed is rebuilt from the snapshot cut.
//!
//! Slices hold deltas computed with one definition (filter, dimensions,
//! measures, granularity); a changed definition makes them meaningless
//! beside the new one's, and merging the two would answer neither. Redis
//! records each view's definition fingerprint (`P:defs`, written by the apply
//! script, which also refuses a writer whose fingerprints differ). At start,
//! [`reconcile`] compares the configured views with it: when a view's
//! definition changed, or a view was added to a Redis that records
//! definitions, the whole speed state under the prefix is deleted and every
//! partition is rebuilt from the snapshot cut (offsets are shared by all
//! views, so one view cannot be rebuilt alone without counting the others
//! twice). A Redis written before fingerprints were recorded is adopted as
//! it is. Each partition group records the definitions of its own writes;
//! a view that differs in any group counts as changed. With tagged keys the
//! fingerprint includes the number of groups ([`Layout::fingerprint`]), so
//! a changed `redis.partition_groups` rebuilds from the cut too. The
//! serving role's alert keys under the same prefix
//! ([`Layout::alerts`]) are not the speed layer's and are kept.

use std::collections::HashMap;

use tally_core::keys::Layout;
use tally_core::view::ViewDef;

use crate::error::SpeedError;
use crate::redis_con::RedisCon;

/// Keys deleted per command when the state is wiped.
const DELETE_BATCH: usize = 500;

/// Compare `views` with the definitions Redis records (in every partition
/// group that records any); on a change, delete every key under the prefix,
/// on every master. Returns the views whose definition changed or that are
/// new (empty: nothing was deleted).
pub(crate) async fn reconcile(
    con: &mut RedisCon,
    layout: &Layout,
    views: &[ViewDef],
) -> Result<Vec<String>, SpeedError> {
    let mut recorded: Vec<HashMap<String, String>> = Vec::new();
    for keys in layout.all() {
        let stored: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.definitions())
            .query_async(con)
            .await?;
        if !stored.is_empty() {
            recorded.push(stored);
        }
    }
    if recorded.is_empty() {
        return Ok(Vec::new());
    }
    let changed: Vec<String> = views
        .iter()
        .filter(|v| {
            let fp = layout.fingerprint(v);
            recorded
                .iter()
                .any(|stored| stored.get(&v.name) != Some(&fp))
        })
        .map(|v| v.name.clone())
        .collect();
    if changed.is_empty() {
        return Ok(changed);
    }
    tracing::warn!(views = ?changed, "view definitions changed: deleting the speed layer's state and rebuilding it from the snapshot cut");
    metrics::counter!("tally_speed_definition_rebuilds_total").increment(1);
    let pattern = format!("{}:*", layout.prefix());
    let alerts = layout.alerts();
    for node in con.masters().await? {
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(DELETE_BATCH);
            let (next, mut found): (u64, Vec<String>) =
                redis::from_redis_value(con.on_node(&node, scan).await?)
                    .map_err(redis::RedisError::from)?;
            found.retain(|k| !alerts.owns(k));
            // On a cluster the client splits the command by slot.
            if !found.is_empty() {
                let _: () = redis::cmd("UNLINK").arg(&found).query_async(con).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(changed)
}
