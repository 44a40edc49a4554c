//! Lookup tables (`[[lookup]]`): loaded from the object store by the
//! serving role, refreshed with every manifest poll, applied at query time
//! (`group_by=properties.page@section`, `filter=properties.page@section:news`).
//!
//! Applied at query time, a lookup never touches what the layers store: a
//! changed table changes the next answer, never the merge. [`Lookups`]
//! holds the loaded tables as one `ArcSwap`ped set, so a query maps every
//! row through one version of each table.
//!
//! Guarantees: a table is read again only when its object changed (e-tag,
//! size or modification time); a table that cannot be read or parsed keeps
//! its previous version serving and the error is shown in
//! `/api/v1/status`; a query on a table never loaded answers with every
//! value mapped to the table's `missing` value and says
//! `"degraded": ["lookup"]`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use tally_core::config::LookupConfig;

pub use tally_store::lookup::{Table, TableError, MAX_TABLE_BYTES};

/// One table as loaded, with what identifies its object.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub table: Arc<Table>,
    /// (e-tag, size, modified ms) of the object read.
    seen: (Option<String>, u64, i64),
    pub loaded_ms: i64,
}

/// Every configured table: the loaded version, and the last error.
#[derive(Debug, Clone, Default)]
pub struct LookupSet {
    pub tables: BTreeMap<String, Loaded>,
    pub errors: BTreeMap<String, String>,
}

/// The tables in use, swapped whole.
#[derive(Debug, Default)]
pub struct Lookups {
    set: ArcSwap<LookupSet>,
}

fn seen_of(meta: &ObjectMeta) -> (Option<String>, u64, i64) {
    (
        meta.e_tag.clone(),
        meta.size,
        meta.last_modified.timestamp_millis(),
    )
}

impl Lookups {
    /// The set in use.
    pub fn load(&self) -> Arc<LookupSet> {
        self.set.load_full()
    }

    /// Read every table whose object changed. Returns whether a table
    /// changed (answers computed before are stale).
    pub async fn refresh(
        &self,
        store: &dyn ObjectStore,
        configs: &[LookupConfig],
        now_ms: i64,
    ) -> bool {
        if configs.is_empty() {
            return false;
        }
        let current = self.set.load_full();
        let mut next = LookupSet::default();
        let mut changed = false;
        for cfg in configs {
            let previous = current.tables.get(&cfg.name);
            match read(store, cfg, previous).await {
                Ok(Some(loaded)) => {
                    tracing::info!(lookup = %cfg.name, version = %loaded.table.version, keys = loaded.table.map.len(), "lookup table loaded");
                    metrics::gauge!("tally_serving_lookup_keys", "lookup" => cfg.name.clone())
                        .set(loaded.table.map.len() as f64);
                    next.tables.insert(
                        cfg.name.clone(),
                        Loaded {
                            loaded_ms: now_ms,
                            ..loaded
                        },
                    );
                    changed = true;
                }
                Ok(None) => {
                    if let Some(p) = previous {
                        next.tables.insert(cfg.name.clone(), p.clone());
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lookup table not loaded; keeping the previous version");
                    if let Some(p) = previous {
                        next.tables.insert(cfg.name.clone(), p.clone());
                    }
                    next.errors.insert(cfg.name.clone(), e.to_string());
                }
            }
        }
        changed |= next.errors != current.errors;
        self.set.store(Arc::new(next));
        changed
    }
}

/// The table of `cfg` if its object changed since `previous` was read.
async fn read(
    store: &dyn ObjectStore,
    cfg: &LookupConfig,
    previous: Option<&Loaded>,
) -> Result<Option<Loaded>, TableError> {
    let path = Path::from(cfg.path.as_str());
    let store_err = |e: object_store::Error| TableError::Store {
        table: cfg.name.clone(),
        path: cfg.path.clone(),
        message: e.to_string(),
    };
    let meta = store.head(&path).await.map_err(store_err)?;
    let seen = seen_of(&meta);
    if previous.is_some_and(|p| p.seen == seen) {
        return Ok(None);
    }
    if meta.size > MAX_TABLE_BYTES {
        return Err(TableError::Content {
            table: cfg.name.clone(),
            problem: format!(
                "`{}` holds {} bytes, over the {MAX_TABLE_BYTES} a table may hold: split it or keep only the keys in use",
                cfg.path, meta.size
            ),
        });
    }
    let got = store.get(&path).await.map_err(store_err)?;
    // What was read, not what was headed: a rewrite in between is seen
    // again at the next poll.
    let seen = seen_of(&got.meta);
    let bytes = got.bytes().await.map_err(store_err)?;
    let (cfg, table) = (cfg.clone(), bytes);
    let table = tokio::task::spawn_blocking(move || Table::parse(&cfg, table))
        .await
        .map_err(|e| TableError::Content {
            table: String::new(),
            problem: format!("the parse task failed: {e}"),
        })??;
    Ok(Some(Loaded {
        table: Arc::new(table),
        seen,
        loaded_ms: 0,
    }))
}
