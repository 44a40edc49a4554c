//! Opening the object store named in the config (`[store] url`).
//!
//! Every role opens its store here, so `file://`, `memory://` and `s3://`
//! mean the same thing to all of them. Everything above takes an
//! `Arc<dyn ObjectStore>`: tests run on `memory://`, users on `file://` or
//! `s3://`, with the same code. Guarantee: a URL that names no supported
//! store is [`StoreError::BadUrl`], with the forms that are.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use tally_core::config::StoreConfig;

use crate::object::StoreError;

/// Open the store named by `cfg.url`.
///
/// - `file://PATH` (absolute or relative; the folder is created),
/// - `memory://` (a fresh in-memory store; for tests),
/// - `s3://BUCKET[/PREFIX]` with `s3_endpoint` / `s3_region` from config and
///   credentials from the usual `AWS_*` environment variables. A plain-HTTP
///   endpoint (MinIO, moto, s3s-fs) is allowed.
pub fn open(cfg: &StoreConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let url = cfg.url.as_str();
    if let Some(path) = url.strip_prefix("file://") {
        let path = if path.is_empty() { "." } else { path };
        std::fs::create_dir_all(path).map_err(|source| StoreError::Folder {
            path: path.to_owned(),
            source,
        })?;
        let fs = LocalFileSystem::new_with_prefix(path).map_err(|source| StoreError::Open {
            url: url.to_owned(),
            source,
        })?;
        return Ok(Arc::new(fs));
    }
    if url == "memory://" || url.starts_with("memory://") {
        return Ok(Arc::new(InMemory::new()));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (rest, ""),
        };
        if bucket.is_empty() {
            return Err(StoreError::BadUrl(url.to_owned()));
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(region) = &cfg.s3_region {
            b = b.with_region(region);
        }
        if let Some(endpoint) = &cfg.s3_endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let s3 = b.build().map_err(|source| StoreError::Open {
            url: url.to_owned(),
            source,
        })?;
        let store: Arc<dyn ObjectStore> = Arc::new(s3);
        if prefix.is_empty() {
            return Ok(store);
        }
        return Ok(Arc::new(object_store::prefix::PrefixStore::new(
            store, prefix,
        )));
    }
    Err(StoreError::BadUrl(url.to_owned()))
}
