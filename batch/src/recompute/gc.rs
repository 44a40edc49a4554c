//! Garbage collection: snapshot files no manifest refers to.

use std::collections::BTreeSet;
use std::sync::Arc;

use object_store::path::Path;
use object_store::ObjectStore;
use tally_store::object as store;
use tally_store::{manifest, paths};

use super::BatchError;

/// Delete snapshot files of `view` that its manifest does not refer to and
/// that are older than `grace_ms`. Returns how many objects were deleted.
pub(crate) async fn gc_view(
    store: &Arc<dyn ObjectStore>,
    view: &str,
    grace_ms: i64,
    now_ms: i64,
) -> Result<usize, BatchError> {
    let Some((m, _)) = manifest::get(store.as_ref(), view).await? else {
        return Ok(0);
    };
    let keep: BTreeSet<&str> = m.days().iter().map(|d| d.path.as_str()).collect();
    let mpath = paths::manifest(view);
    let doomed: Vec<Path> = store::list(store.as_ref(), &paths::view_dir(view))
        .await?
        .into_iter()
        .filter(|o| {
            let p = o.location.as_ref();
            p != mpath
                && !keep.contains(p)
                && o.last_modified.timestamp_millis() + grace_ms <= now_ms
        })
        .map(|o| o.location)
        .collect();
    let n = doomed.len();
    store::delete(store.as_ref(), doomed).await?;
    Ok(n)
}
