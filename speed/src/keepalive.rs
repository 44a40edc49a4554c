//! Speed-layer slices stay alive until the batch covers them.
//!
//! A slice's keys expire `epochs.retention` after the last write to them
//! ([`crate::apply`] sets `max(end(epoch), now) + retention`), but the serving
//! layer merges every slice at or above the snapshot cut. If the cut stalls
//! (the archiver stopped, batch runs fail) or records arrive late, a slice the
//! batch does not cover yet could expire, and answers would shrink with
//! nothing to say so. So [`run`] renews, every quarter of the retention (at
//! most every minute), each slice at or above the snapshot cut whose expiry
//! comes within half the retention: its counters, its cell set and its
//! sketches get `now + retention`, and its entry in the slice set that score.
//! Slices below the cut are left to expire. With no snapshot yet (no cut)
//! every slice is kept: the speed layer is then the only copy.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use tokio_util::sync::CancellationToken;

use tally_core::config::Config;
use tally_core::keys::{CellMember, Keys, SketchField};
use tally_core::time::{now_ms, Epoch};
use tally_core::view::ViewDef;

use crate::error::SpeedError;
use crate::redis_con::RedisCon;
use crate::resume::snapshot_cut;

/// How often [`run`] renews, for a retention of `retention_ms`.
pub(crate) fn period(retention_ms: i64) -> Duration {
    Duration::from_millis((retention_ms / 4).clamp(50, 60_000) as u64)
}

/// Renew slices at or above the snapshot cut until `shutdown`.
pub(crate) async fn run(
    cfg: Arc<Config>,
    store: Arc<dyn ObjectStore>,
    mut con: RedisCon,
    shutdown: CancellationToken,
) {
    let groups = cfg.redis.layout().all();
    let retention = cfg.epochs.retention.0;
    let mut tick = tokio::time::interval(period(retention));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let cut = match snapshot_cut(&store, &cfg.views).await {
            Ok(c) => c,
            Err(e) => {
                // Unknown cut: renew everything rather than lose a slice.
                tracing::warn!(error = %e, "cannot read the snapshot cut; keeping every slice alive");
                None
            }
        };
        let mut renewed = Ok(0);
        for keys in &groups {
            match renew(&mut con, keys, &cfg.views, cut, now_ms(), retention).await {
                Ok(n) => renewed = renewed.map(|m| m + n),
                Err(e) => renewed = Err(e),
            }
        }
        match renewed {
            Ok(n) if n > 0 => {
                metrics::counter!("tally_speed_slices_renewed_total").increment(n as u64);
                tracing::debug!(
                    slices = n,
                    ?cut,
                    "speed slices renewed until the batch covers them"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "renewing speed slices failed; retrying"),
        }
    }
}

/// Renew every slice of `views` in one partition group (`keys`) at or above
/// `cut` (all when `None`) whose expiry comes before
/// `now_ms + retention_ms / 2`. Returns how many. Each pipeline stays within
/// the group's slot.
///
/// Only slices with at least a tenth of the retention left are renewed: one
/// closer to its expiry may already be gone (clocks differ), and renewing its
/// entry alone would make a lost slice look alive (the apply script reports a
/// slice whose keys vanished before their time). Expiries only move later
/// (`GT`), never under a flush that just wrote a later one.
pub(crate) async fn renew(
    con: &mut RedisCon,
    keys: &Keys,
    views: &[ViewDef],
    cut: Option<Epoch>,
    now_ms: i64,
    retention_ms: i64,
) -> Result<usize, SpeedError> {
    let until = now_ms.saturating_add(retention_ms);
    let soon = now_ms.saturating_add(retention_ms / 2);
    let alive = now_ms.saturating_add(retention_ms / 10);
    let mut renewed = 0;
    for view in views {
        let name = view.name.as_str();
        let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(keys.slices(name))
            .arg(alive)
            .arg(format!("({soon}"))
            .query_async(con)
            .await?;
        let distinct = view.distinct_measures();
        let quantiles = view.quantile_measures();
        for member in members {
            let Some((epoch, day)) = Keys::parse_slice_member(&member) else {
                continue;
            };
            if cut.is_some_and(|c| epoch < c) {
                continue;
            }
            let cells_key = keys.cells(name, epoch, day);
            let mut p = redis::pipe();
            p.cmd("PEXPIREAT")
                .arg(keys.counters(name, epoch, day))
                .arg(until)
                .arg("GT")
                .ignore();
            p.cmd("PEXPIREAT")
                .arg(&cells_key)
                .arg(until)
                .arg("GT")
                .ignore();
            if !distinct.is_empty() || !quantiles.is_empty() {
                let cells: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&cells_key)
                    .arg(0)
                    .arg(-1)
                    .query_async(con)
                    .await?;
                let sketches = keys.sketch_prefix(name, epoch, day);
                let quantile_sketches = keys.quantile_prefix(name, epoch, day);
                let per_cell = distinct
                    .iter()
                    .map(|m| (&sketches, m))
                    .chain(quantiles.iter().map(|m| (&quantile_sketches, m)));
                let per_cell: Vec<_> = per_cell.collect();
                for c in cells.iter().filter_map(|c| CellMember::parse(c)) {
                    for (prefix, m) in &per_cell {
                        let suffix = SketchField::encode(c.bucket_ms, m, c.group);
                        p.cmd("PEXPIREAT")
                            .arg(format!("{prefix}{suffix}"))
                            .arg(until)
                            .arg("GT")
                            .ignore();
                    }
                }
            }
            // Only a later expiry: a flush may have just written a later one.
            p.cmd("ZADD")
                .arg(keys.slices(name))
                .arg("XX")
                .arg("GT")
                .arg(until)
                .arg(&member)
                .ignore();
            p.query_async::<()>(con).await?;
            renewed += 1;
        }
    }
    Ok(renewed)
}
