//! JSON objects in the store, conditional puts, listing and deletion: the
//! few typed operations every stored object is read and written with.
//!
//! Guarantees: a put is atomic (readers see the old or the new object, never
//! a mix); a conditional put ([`put_json_if`]) publishes only over the
//! version it read, on stores that support it, and falls back to an atomic
//! overwrite on stores that do not (the local file system), saying so in
//! [`Written::conditional`]; a missing object reads as `None`, never as an
//! error; an object that is not the JSON expected is [`StoreError::Json`],
//! naming the path.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, ObjectMeta, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "store url `{0}` is not supported: use file://PATH, s3://BUCKET[/PREFIX] or memory://"
    )]
    BadUrl(String),
    #[error("cannot open store `{url}`: {source}")]
    Open {
        url: String,
        source: object_store::Error,
    },
    #[error("cannot create folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("object `{path}` is not valid JSON of the expected kind: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    /// A conditional put lost: someone else wrote the object first.
    #[error("object `{0}` was changed concurrently")]
    Conflict(String),
}

/// The version of an object as read, for a later conditional put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub e_tag: Option<String>,
    pub version: Option<String>,
}

/// Read and parse a JSON object; `None` when it does not exist.
pub async fn get_json<T: DeserializeOwned>(
    store: &dyn ObjectStore,
    path: &str,
) -> Result<Option<(T, Version)>, StoreError> {
    let loc = Path::from(path);
    let res = match store.get_opts(&loc, GetOptions::default()).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let version = Version {
        e_tag: res.meta.e_tag.clone(),
        version: res.meta.version.clone(),
    };
    let bytes = res.bytes().await?;
    let value = serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
        path: path.to_owned(),
        source,
    })?;
    Ok(Some((value, version)))
}

/// Write a JSON object atomically, overwriting.
pub async fn put_json<T: Serialize>(
    store: &dyn ObjectStore,
    path: &str,
    value: &T,
) -> Result<(), StoreError> {
    put_bytes(store, path, to_json(path, value)?, PutMode::Overwrite).await?;
    Ok(())
}

/// What a conditional put wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The version of the object just written, for the next conditional put.
    pub version: Version,
    /// Whether the store checked `expected`. False when it has no conditional
    /// puts of that kind and overwrote instead: the caller got no fence.
    pub conditional: bool,
}

/// Write a JSON object only if the object is still at `expected` (or, with
/// `None`, does not exist yet). Stores without conditional puts get an atomic
/// overwrite instead (the local file system has create-if-absent but no
/// compare-and-swap). Returns [`StoreError::Conflict`] when another writer won.
pub async fn put_json_if<T: Serialize>(
    store: &dyn ObjectStore,
    path: &str,
    value: &T,
    expected: Option<&Version>,
) -> Result<Written, StoreError> {
    let body = to_json(path, value)?;
    let mode = match expected {
        None => PutMode::Create,
        Some(v) => PutMode::Update(UpdateVersion {
            e_tag: v.e_tag.clone(),
            version: v.version.clone(),
        }),
    };
    match put_bytes(store, path, body.clone(), mode).await {
        Ok(version) => Ok(Written {
            version,
            conditional: true,
        }),
        Err(StoreError::Store(
            object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. },
        )) => Ok(Written {
            version: put_bytes(store, path, body, PutMode::Overwrite).await?,
            conditional: false,
        }),
        Err(e) => Err(e),
    }
}

fn to_json<T: Serialize>(path: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec_pretty(value).map_err(|source| StoreError::Json {
        path: path.to_owned(),
        source,
    })
}

async fn put_bytes(
    store: &dyn ObjectStore,
    path: &str,
    body: Vec<u8>,
    mode: PutMode,
) -> Result<Version, StoreError> {
    let opts = PutOptions {
        mode,
        ..PutOptions::default()
    };
    match store
        .put_opts(&Path::from(path), PutPayload::from(body), opts)
        .await
    {
        Ok(r) => Ok(Version {
            e_tag: r.e_tag,
            version: r.version,
        }),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => Err(StoreError::Conflict(path.to_owned())),
        Err(e) => Err(e.into()),
    }
}

/// Every object under `prefix` (recursive).
pub async fn list(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
    let prefix = Path::from(prefix);
    Ok(store.list(Some(&prefix)).try_collect().await?)
}

/// Delete objects; missing ones are not an error.
pub async fn delete(store: &dyn ObjectStore, paths: Vec<Path>) -> Result<(), StoreError> {
    if paths.is_empty() {
        return Ok(());
    }
    let stream = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
    let mut out = store.delete_stream(stream);
    while let Some(r) = out.next().await {
        match r {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
