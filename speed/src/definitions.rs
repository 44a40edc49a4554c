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
//! it is.

use std::collections::HashMap;

use redis::aio::ConnectionManager;
use tally_core::keys::Keys;
use tally_core::view::ViewDef;

use crate::error::SpeedError;

/// Keys deleted per command when the state is wiped.
const DELETE_BATCH: usize = 500;

/// Compare `views` with the definitions Redis records; on a change, delete
/// every key under the prefix. Returns the views whose definition changed
/// or that are new (empty: nothing was deleted).
pub(crate) async fn reconcile(
    con: &mut ConnectionManager,
    keys: &Keys,
    views: &[ViewDef],
) -> Result<Vec<String>, SpeedError> {
    let stored: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.definitions())
        .query_async(con)
        .await?;
    if stored.is_empty() {
        return Ok(Vec::new());
    }
    let changed: Vec<String> = views
        .iter()
        .filter(|v| stored.get(&v.name) != Some(&v.fingerprint()))
        .map(|v| v.name.clone())
        .collect();
    if changed.is_empty() {
        return Ok(changed);
    }
    tracing::warn!(views = ?changed, "view definitions changed: deleting the speed layer's state and rebuilding it from the snapshot cut");
    metrics::counter!("tally_speed_definition_rebuilds_total").increment(1);
    let pattern = format!("{}:*", keys.prefix());
    let mut cursor: u64 = 0;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(DELETE_BATCH)
            .query_async(con)
            .await?;
        if !found.is_empty() {
            let _: () = redis::cmd("UNLINK").arg(&found).query_async(con).await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(changed)
}
