//! The batch lock: one object (`batch/_lock.json`) that keeps batch runs from
//! overlapping, across processes and machines sharing a store.
//!
//! Taking the lock is a create-if-absent put; a lock past its expiry is taken
//! over with a conditional put on the version read, so two contenders cannot
//! both win on stores with conditional puts (S3, memory). On the local file
//! system, creation is exclusive but a takeover of an expired lock is a plain
//! overwrite. A holder that crashes leaves the lock until it expires
//! (`batch.lock_ttl`).

use std::sync::Arc;

use object_store::path::Path;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tally_core::paths;

use crate::store::{self, StoreError};

/// The lock object's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFile {
    pub owner: String,
    /// Epoch ms after which the lock may be taken over.
    pub until_ms: i64,
}

/// A held lock; release it with [`BatchLock::release`] (dropping it leaves the
/// lock to expire).
#[derive(Debug)]
pub struct BatchLock {
    store: Arc<dyn ObjectStore>,
    pub owner: String,
}

/// Outcome of [`acquire`].
#[derive(Debug)]
pub enum Acquired {
    Held(BatchLock),
    /// Someone else holds it.
    Busy(LockFile),
}

/// Try to take the batch lock for `ttl_ms` from `now_ms`.
pub async fn acquire(
    store: &Arc<dyn ObjectStore>,
    owner: &str,
    ttl_ms: i64,
    now_ms: i64,
) -> Result<Acquired, StoreError> {
    let mine = LockFile {
        owner: owner.to_owned(),
        until_ms: now_ms.saturating_add(ttl_ms),
    };
    let held = || {
        Acquired::Held(BatchLock {
            store: store.clone(),
            owner: owner.to_owned(),
        })
    };
    match store::put_json_if(store.as_ref(), paths::BATCH_LOCK, &mine, None).await {
        Ok(_) => return Ok(held()),
        Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e),
    }
    let Some((current, version)) =
        store::get_json::<LockFile>(store.as_ref(), paths::BATCH_LOCK).await?
    else {
        // Released meanwhile: try once more.
        return match store::put_json_if(store.as_ref(), paths::BATCH_LOCK, &mine, None).await {
            Ok(_) => Ok(held()),
            Err(StoreError::Conflict(_)) => Ok(Acquired::Busy(LockFile {
                owner: "unknown".into(),
                until_ms: now_ms,
            })),
            Err(e) => Err(e),
        };
    };
    if current.until_ms > now_ms && current.owner != owner {
        return Ok(Acquired::Busy(current));
    }
    match store::put_json_if(store.as_ref(), paths::BATCH_LOCK, &mine, Some(&version)).await {
        Ok(_) => Ok(held()),
        Err(StoreError::Conflict(_)) => Ok(Acquired::Busy(current)),
        Err(e) => Err(e),
    }
}

impl BatchLock {
    /// Delete the lock if it is still ours.
    pub async fn release(self) -> Result<(), StoreError> {
        if let Some((cur, _)) =
            store::get_json::<LockFile>(self.store.as_ref(), paths::BATCH_LOCK).await?
        {
            if cur.owner == self.owner {
                store::delete(self.store.as_ref(), vec![Path::from(paths::BATCH_LOCK)]).await?;
            }
        }
        Ok(())
    }
}
