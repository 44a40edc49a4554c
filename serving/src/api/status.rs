//! `GET /api/v1/status`: cut and last run per view, archive progress, the
//! speed layer's offsets and lag, the day cache and the speed copy.
//!
//! Guarantee: bounded in time whatever is down; a component that does not
//! answer is listed in `degraded` and its fields are null or empty.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use tally_store::cut::CutFile;
use tally_store::progress::ProgressFile;
use tally_store::StoreError;

use crate::dto::{LookupStatus, PartitionStatus, SkippedFile, StatusResponse, ViewStatus};
use crate::error::ErrorBody;
use crate::state::{now_ms, AppState};

/// Cut, last run, speed lag, archive progress, freshness.
#[utoipa::path(get, path = "/api/v1/status", security((), ("bearer" = [])),
    responses((status = 200, body = StatusResponse), (status = 401, body = ErrorBody)))]
pub async fn status(State(state): State<AppState>) -> Json<StatusResponse> {
    let now = now_ms();
    let mut degraded = Vec::new();
    let health = state.inner.health.load_full();
    if !health.errors.is_empty() {
        degraded.push("store".to_owned());
    }
    let store = state.inner.store.clone();
    let t = state.inner.opts.redis_timeout;
    // Archive cut and progress, bounded in time.
    let mut archive_cut = None;
    let mut partitions = Vec::new();
    let store_part = async {
        let mut store_ok = true;
        match tally_store::cut::get(store.as_ref()).await {
            Ok(Some((CutFile::V1 { cut, decided_ms }, _))) => archive_cut = Some((cut, decided_ms)),
            // No cut yet, or one this version cannot read: no cut to show.
            Ok(None) | Err(StoreError::Json { .. }) => {}
            Err(_) => store_ok = false,
        }
        match tally_store::progress::all(store.as_ref(), 1024).await {
            Ok(all) => partitions = all,
            Err(_) => store_ok = false,
        }
        store_ok
    };
    let store_ok = tokio::time::timeout(t * 2, store_part)
        .await
        .unwrap_or(false);
    if !store_ok && !degraded.iter().any(|d| d == "store") {
        degraded.push("store".to_owned());
    }
    // Speed offsets and slice counts: one pipeline per partition group.
    let mut names: Vec<&String> = state.inner.views.keys().collect();
    names.sort();
    let redis = state.inner.speed.redis();
    let reads = redis.layout().all().into_iter().map(|keys| {
        let mut p = redis::pipe();
        p.cmd("HGETALL").arg(keys.offsets());
        for n in &names {
            p.cmd("ZCARD").arg(keys.slices(n));
        }
        async move { redis.query::<Vec<redis::Value>>(&p).await }
    });
    let mut offsets: BTreeMap<String, i64> = BTreeMap::new();
    let mut slices: Vec<Option<u64>> = vec![Some(0); names.len()];
    for read in futures::future::join_all(reads).await {
        let Ok(vals) = read else {
            if !degraded.iter().any(|d| d == "redis") {
                degraded.push("redis".to_owned());
            }
            slices = vec![None; names.len()];
            continue;
        };
        let mut it = vals.into_iter();
        let group: BTreeMap<String, i64> = it
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_default();
        offsets.extend(group);
        for (total, v) in slices.iter_mut().zip(it) {
            let n: Option<u64> = redis::from_redis_value(v).ok();
            *total = total.zip(n).map(|(a, b)| a + b);
        }
    }
    let views = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let snap = state.snapshot(n);
            let m = snap.as_ref().and_then(|s| s.manifest.as_ref());
            ViewStatus {
                name: (*n).clone(),
                cut: m.map(|m| m.cut),
                last_run_id: m.map(|m| m.run_id.clone()),
                last_run_created_ms: m.map(|m| m.created_ms),
                snapshot_age_ms: m.map(|m| now - m.created_ms),
                snapshot_rows: snap.as_ref().map_or(0, |s| s.rows),
                snapshot_days: snap.as_ref().map_or(0, |s| s.days),
                definition_matches: snap.as_ref().is_none_or(|s| s.definition_matches),
                speed_slices: slices.get(i).copied().flatten(),
                store_error: health.errors.get(*n).cloned(),
                skipped_files: m
                    .map(|m| {
                        m.skipped
                            .iter()
                            .map(|f| SkippedFile {
                                path: f.path.clone(),
                                size: f.size,
                                reason: f.reason.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    let partitions = partitions
        .into_iter()
        .map(
            |ProgressFile::V1 {
                 topic,
                 partition,
                 archived_to,
                 high_watermark,
                 observed_ms,
                 ..
             }| {
                let speed_offset = offsets
                    .get(&tally_core::keys::Keys::offset_field(&topic, partition))
                    .copied();
                PartitionStatus {
                    speed_lag: speed_offset.map(|o| (high_watermark - o).max(0)),
                    archive_lag: (high_watermark - archived_to).max(0),
                    topic,
                    partition,
                    archived_to,
                    high_watermark,
                    observed_ms,
                    speed_offset,
                }
            },
        )
        .collect();
    Json(StatusResponse {
        now_ms: now,
        started_ms: state.inner.started_ms,
        degraded,
        archive_cut: archive_cut.map(|c| c.0),
        archive_cut_decided_ms: archive_cut.map(|c| c.1),
        views,
        partitions,
        speed_offsets: offsets,
        last_manifest_poll_ms: health.last_poll_ms,
        day_cache_bytes: state.inner.days.bytes(),
        speed_synced_ms: state.inner.speed.synced_ms(),
        lookups: lookup_status(&state),
    })
}

/// Each `[[lookup]]`: the version in use and the last error.
fn lookup_status(state: &AppState) -> Vec<LookupStatus> {
    let set = state.inner.lookups.load();
    state
        .inner
        .cfg
        .lookups
        .iter()
        .map(|c| {
            let loaded = set.tables.get(&c.name);
            LookupStatus {
                name: c.name.clone(),
                path: c.path.clone(),
                version: loaded.map(|l| l.table.version.clone()),
                keys: loaded.map_or(0, |l| l.table.map.len()),
                loaded_ms: loaded.map(|l| l.loaded_ms),
                error: set.errors.get(&c.name).cloned(),
            }
        })
        .collect()
}
