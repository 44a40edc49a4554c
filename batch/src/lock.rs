//! The batch lock: one object (`batch/_lock.json`) that keeps batch runs from
//! overlapping, across processes and machines sharing a store.
//!
//! Taking the lock is a create-if-absent put; a lock past its expiry is taken
//! over with a conditional put on the version read, so two contenders cannot
//! both win on stores with conditional puts (S3, memory). On the local file
//! system, creation is exclusive but a takeover of an expired lock is a plain
//! overwrite. A holder that crashes leaves the lock until it expires
//! (`batch.lock_ttl`).
//!
//! A run holds the lock as a lease: [`BatchLock::heartbeat`] renews it every
//! third of the TTL while the run works, and [`BatchLock::confirm`] renews it
//! once more right before anything is published. A renewal reads the object
//! first and writes over the version it read, so a holder whose lock was taken
//! over (it stalled past the TTL, or the object was overwritten) learns so at
//! its next renewal, and from then on every renewal fails with
//! [`LockError::Lost`]: it must not publish, since the new holder may already
//! have garbage-collected the files it wrote.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tally_store::paths;

use tally_store::object::{self as store, StoreError};

/// The lock object's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFile {
    pub owner: String,
    /// Epoch ms after which the lock may be taken over.
    pub until_ms: i64,
}

/// Why a held lock could not be renewed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds the lock now (or nobody does): this holder's run
    /// must not publish.
    #[error("the batch lock was taken over (now held by {})", .holder.as_deref().unwrap_or("nobody"))]
    Lost { holder: Option<String> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A held lock; release it with [`BatchLock::release`] (dropping it leaves the
/// lock to expire).
#[derive(Debug)]
pub struct BatchLock {
    store: Arc<dyn ObjectStore>,
    pub owner: String,
    ttl_ms: i64,
    /// Set once a renewal found the lock in other hands; never cleared.
    lost: AtomicBool,
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
    let held = |_: store::Written| {
        Acquired::Held(BatchLock {
            store: store.clone(),
            owner: owner.to_owned(),
            ttl_ms,
            lost: AtomicBool::new(false),
        })
    };
    match store::put_json_if(store.as_ref(), paths::BATCH_LOCK, &mine, None).await {
        Ok(w) => return Ok(held(w)),
        Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e),
    }
    let Some((current, version)) =
        store::get_json::<LockFile>(store.as_ref(), paths::BATCH_LOCK).await?
    else {
        // Released meanwhile: try once more.
        return match store::put_json_if(store.as_ref(), paths::BATCH_LOCK, &mine, None).await {
            Ok(w) => Ok(held(w)),
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
        Ok(w) => Ok(held(w)),
        Err(StoreError::Conflict(_)) => Ok(Acquired::Busy(current)),
        Err(e) => Err(e),
    }
}

impl BatchLock {
    /// Extend the lock to `now_ms + ttl`, if it is still this holder's.
    ///
    /// The object must still name this holder (owners are unique per run), and
    /// is written over the version just read, so a takeover in between loses
    /// the race on stores with conditional puts. Anything else means the lock
    /// was taken over, and it stays lost for good.
    pub async fn renew(&self, now_ms: i64) -> Result<(), LockError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(LockError::Lost { holder: None });
        }
        let lost = |holder: Option<String>| {
            self.lost.store(true, Ordering::SeqCst);
            Err(LockError::Lost { holder })
        };
        let current = store::get_json::<LockFile>(self.store.as_ref(), paths::BATCH_LOCK).await?;
        let Some((current, version)) = current else {
            return lost(None);
        };
        if current.owner != self.owner {
            return lost(Some(current.owner));
        }
        let mine = LockFile {
            owner: self.owner.clone(),
            until_ms: now_ms.saturating_add(self.ttl_ms),
        };
        match store::put_json_if(
            self.store.as_ref(),
            paths::BATCH_LOCK,
            &mine,
            Some(&version),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict(_))
            | Err(StoreError::Store(object_store::Error::NotFound { .. })) => lost(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Renew now: `Ok` means the lock is this holder's for another TTL, so
    /// what it publishes next cannot race another run.
    pub(crate) async fn confirm(&self) -> Result<(), LockError> {
        self.renew(tally_core::time::now_ms()).await
    }

    /// Renew every third of the TTL until the returned task is aborted or the
    /// lock is lost. A renewal that fails on the store is retried at the
    /// next beat; the lock expires if none succeeds within the TTL.
    pub fn heartbeat(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let lock = self.clone();
        let beat = Duration::from_millis((self.ttl_ms / 3).max(1) as u64);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(beat).await;
                match lock.confirm().await {
                    Ok(()) => {}
                    Err(e @ LockError::Lost { .. }) => {
                        tracing::error!(owner = %lock.owner, error = %e, "batch lock lost; this run will not publish");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(owner = %lock.owner, error = %e, "could not renew the batch lock; retrying")
                    }
                }
            }
        })
    }

    /// Delete the lock if it is still ours.
    pub async fn release(&self) -> Result<(), StoreError> {
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
