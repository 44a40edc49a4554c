//! Writing chunks to Redis through the fencing script.
//!
//! A [`Chunk`] is split by partition group (`tally_core::keys::Layout`):
//! each group's ranges and slices become one `EVALSHA` of `apply.lua`, all
//! of whose keys share the group's hash tag (one Redis Cluster slot), the
//! calls of the groups running concurrently. Within a group the deltas and
//! the new offsets of its partitions are applied together, and only if
//! Redis stores each partition's start (or nothing, for a rebuild start). A
//! replay after a crash, or a zombie member after a rebalance, therefore
//! writes nothing; nor does a Redis that lost its memory, which is noticed
//! instead of being silently continued from the middle. Groups are fenced
//! independently: a chunk may be applied in some groups and not in others,
//! and [`Outcome::Failed`] says, per range, what Redis stores (a range of an
//! applied group: its end), which is where the consume loop resumes each
//! partition. A call retried after an error ([`Applier::apply_resuming`])
//! skips the groups that already answered. A Redis that lost only part of
//! the state (an offset but not its counters, or a slice before its time)
//! is reported ([`SpeedError::PartialLoss`]), never rebuilt over (see the
//! script's header).

use std::collections::BTreeMap;

use redis::{Script, Value};

use tally_core::agg::{Agg, AggKind};
use tally_core::config::Config;
use tally_core::counter_log;
use tally_core::hll::{sketch_log, Hll};
use tally_core::keys::{split_sum, CellMember, CounterField, Keys, Layout, Part, SketchField};
use tally_core::quantile::{delta_log, Bucket};
use tally_core::slice_log;
use tally_core::time::EpochGrid;

use crate::delta::{Chunk, Distinct, Folder, MeasureDelta, Range, SliceDelta, SliceId};
use crate::error::SpeedError;
use crate::redis_con::RedisCon;

const SCRIPT: &str = include_str!("apply.lua");

/// How long one script call may take: a flush after a long outage (or a
/// rebuild) can carry large chunks, and the client's default 500 ms would
/// time out calls Redis completes, turning every retry into a fenced
/// replay. Fencing keeps a timed-out call safe either way; this keeps it
/// rare.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What happened to one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; Redis now stores every range's end.
    Applied,
    /// Not applied in at least one partition group: per range, the offset
    /// Redis stores (`None`: nothing), which differs from the range's start
    /// for at least one range. The ranges of groups that were applied store
    /// their end.
    Failed { stored: Vec<Option<i64>> },
}

/// What the groups of one chunk answered so far, kept across retries of
/// the same chunk ([`Applier::apply_resuming`]) so that a group applied
/// before an error elsewhere is not sent again (it would be fenced).
#[derive(Debug, Default)]
pub struct Progress {
    /// Group → per range of the group (in chunk order), what Redis stores
    /// after its call, and whether the call applied.
    done: BTreeMap<u32, (bool, Vec<Option<i64>>)>,
}

/// Whether an error from [`Applier::apply`] may pass if the call is tried
/// again: the connection, a timeout, or a Redis that is loading, busy, out
/// of memory or failing over. Anything else (a script error, a refused
/// command) would fail the same way every time. Either way nothing of the
/// failing group was applied: the script checks everything before it
/// writes.
pub(crate) fn is_transient(e: &SpeedError) -> bool {
    match e {
        SpeedError::Redis(e) => {
            e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_cluster_error()
                || matches!(
                    e.code(),
                    Some(
                        "OOM"
                            | "BUSY"
                            | "LOADING"
                            | "TRYAGAIN"
                            | "MASTERDOWN"
                            | "NOSCRIPT"
                            | "CLUSTERDOWN"
                            | "READONLY"
                    )
                )
                || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
        }
        _ => false,
    }
}

/// The Redis side of the speed layer.
pub struct Applier {
    con: RedisCon,
    layout: Layout,
    grid: EpochGrid,
    retention_ms: i64,
    /// Each view's name and definition fingerprint.
    definitions: Vec<(String, String)>,
    script: Script,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("layout", &self.layout)
            .finish()
    }
}

/// One group's part of a chunk: indices into its ranges and slices.
#[derive(Debug, Default)]
struct GroupPart {
    ranges: Vec<usize>,
    slices: Vec<usize>,
}

impl Applier {
    pub async fn connect(cfg: &Config) -> Result<Applier, SpeedError> {
        let con = RedisCon::connect(&cfg.redis, CALL_TIMEOUT).await?;
        let mut applier = Applier {
            con,
            layout: cfg.redis.layout(),
            grid: cfg.epochs.grid(),
            retention_ms: cfg.epochs.retention.0,
            definitions: cfg
                .views
                .iter()
                .map(|v| (v.name.clone(), cfg.redis.layout().fingerprint(v)))
                .collect(),
            script: Script::new(&SCRIPT.replace("@LOG_LEN@", &slice_log::LOG_LEN.to_string())),
        };
        // On every node of a cluster (SCRIPT LOAD goes to all); a node that
        // lost it later answers NOSCRIPT, and the call loads it again.
        applier.script.load_async(&mut applier.con).await?;
        Ok(applier)
    }

    /// Apply one chunk (see the module documentation).
    pub async fn apply(
        &mut self,
        chunk: &Chunk,
        folder: &Folder,
        now_ms: i64,
    ) -> Result<Outcome, SpeedError> {
        self.apply_resuming(chunk, folder, now_ms, &mut Progress::default())
            .await
    }

    /// Apply one chunk, skipping the groups `progress` says answered in an
    /// earlier call for the same chunk, and recording those that answer now.
    /// On an error, the groups that answered are recorded all the same: call
    /// again with the same `progress` to retry the others.
    pub async fn apply_resuming(
        &mut self,
        chunk: &Chunk,
        folder: &Folder,
        now_ms: i64,
        progress: &mut Progress,
    ) -> Result<Outcome, SpeedError> {
        let parts = self.split(chunk);
        let pending: Vec<(u32, &GroupPart)> = parts
            .iter()
            .filter(|(g, _)| !progress.done.contains_key(g))
            .map(|(g, p)| (*g, p))
            .collect();
        let calls = pending.iter().map(|&(g, part)| {
            let keys = self.layout.keys(g);
            let ranges: Vec<&Range> = part.ranges.iter().map(|&i| &chunk.ranges[i]).collect();
            let slices: Vec<&(SliceId, SliceDelta)> =
                part.slices.iter().map(|&i| &chunk.slices[i]).collect();
            let args = self.args(&keys, &ranges, &slices, folder, now_ms);
            let mut con = self.con.clone();
            let script = &self.script;
            async move {
                let reply: Value = script
                    .key(keys.offsets())
                    .arg(args)
                    .invoke_async(&mut con)
                    .await?;
                parse_reply(&reply, ranges.len())
            }
        });
        let answers = futures::future::join_all(calls).await;
        let mut error: Option<SpeedError> = None;
        for ((g, part), answer) in pending.iter().zip(answers) {
            match answer {
                Ok(Outcome::Applied) => {
                    let ends = part.ranges.iter().map(|&i| Some(chunk.ranges[i].end));
                    progress.done.insert(*g, (true, ends.collect()));
                }
                Ok(Outcome::Failed { stored }) => {
                    progress.done.insert(*g, (false, stored));
                }
                // A permanent error wins: the layer must stop, not retry.
                Err(e) if error.as_ref().is_none_or(is_transient) => error = Some(e),
                Err(_) => {}
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        let mut stored = vec![None; chunk.ranges.len()];
        let mut applied = true;
        for (g, part) in &parts {
            let Some((ok, got)) = progress.done.get(g) else {
                continue;
            };
            applied &= *ok;
            for (&i, s) in part.ranges.iter().zip(got) {
                stored[i] = *s;
            }
        }
        Ok(if applied {
            Outcome::Applied
        } else {
            Outcome::Failed { stored }
        })
    }

    /// The chunk's ranges and slices by partition group.
    fn split(&self, chunk: &Chunk) -> BTreeMap<u32, GroupPart> {
        let mut parts: BTreeMap<u32, GroupPart> = BTreeMap::new();
        for (i, r) in chunk.ranges.iter().enumerate() {
            parts
                .entry(self.layout.group_of(r.partition))
                .or_default()
                .ranges
                .push(i);
        }
        for (i, (id, _)) in chunk.slices.iter().enumerate() {
            parts.entry(id.group).or_default().slices.push(i);
        }
        // A slice's records come from a range of its group, so every group
        // with slices has ranges; one without would be written unfenced.
        debug_assert!(parts.values().all(|p| !p.ranges.is_empty()));
        parts.retain(|_, p| !p.ranges.is_empty());
        parts
    }

    /// The script's ARGV for one group's ranges and slices.
    fn args(
        &self,
        keys: &Keys,
        ranges: &[&Range],
        slices: &[&(SliceId, SliceDelta)],
        folder: &Folder,
        now_ms: i64,
    ) -> Vec<Vec<u8>> {
        let mut a: Vec<Vec<u8>> = vec![
            keys.offsets().into_bytes(),
            ranges.len().to_string().into_bytes(),
        ];
        for r in ranges {
            a.push(Keys::offset_field(&r.topic, r.partition).into_bytes());
            a.push(r.start.to_string().into_bytes());
            a.push(r.end.to_string().into_bytes());
            a.push(if r.fresh {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            });
        }
        a.push(now_ms.to_string().into_bytes());
        a.push(format!("{}:tmp", keys.prefix()).into_bytes());
        a.push(keys.version().into_bytes());
        a.push(keys.seen().into_bytes());
        a.push(keys.definitions().into_bytes());
        a.push(self.definitions.len().to_string().into_bytes());
        for (name, fp) in &self.definitions {
            a.push(name.clone().into_bytes());
            a.push(fp.clone().into_bytes());
        }
        for &(id, delta) in slices {
            let view = folder.view(id.view);
            let name = view.name.as_str();
            // A full retention from the last write, however late the record:
            // until the batch covers the slice, [`crate::keepalive`] renews it.
            let expire_at = self
                .grid
                .end(id.epoch)
                .max(now_ms)
                .saturating_add(self.retention_ms);
            a.push(b"S".to_vec());
            a.push(keys.counters(name, id.epoch, id.day).into_bytes());
            a.push(keys.cells(name, id.epoch, id.day).into_bytes());
            a.push(keys.sketch_prefix(name, id.epoch, id.day).into_bytes());
            let quantile_prefix = keys.quantile_prefix(name, id.epoch, id.day);
            a.push(keys.slices(name).into_bytes());
            a.push(Keys::slice_member(id.epoch, id.day).into_bytes());
            a.push(keys.slice_versions(name).into_bytes());
            a.push(expire_at.to_string().into_bytes());
            let has_quantiles = view.measures.iter().any(|m| m.agg == AggKind::Quantiles);
            a.push(if has_quantiles {
                keys.quantile_log(name, id.epoch, id.day).into_bytes()
            } else {
                Vec::new()
            });
            let log_body_at = a.len();
            a.push(Vec::new());
            let mut log_body = String::new();
            let has_distinct = view.measures.iter().any(|m| m.agg == AggKind::Distinct);
            a.push(if has_distinct {
                keys.sketch_log(name, id.epoch, id.day).into_bytes()
            } else {
                Vec::new()
            });
            let sketch_body_at = a.len();
            a.push(Vec::new());
            let mut sketch_body = String::new();
            a.push(if view.has_counters() {
                keys.counter_log(name, id.epoch, id.day).into_bytes()
            } else {
                Vec::new()
            });
            let counter_fields_at = a.len();
            a.push(Vec::new());
            let mut counter_fields = String::new();
            let count_at = a.len();
            a.push(Vec::new());
            let mut ops = 0usize;
            let mut op = |a: &mut Vec<Vec<u8>>, code: &[u8], field: String, value: Vec<u8>| {
                a.push(code.to_vec());
                a.push(field.into_bytes());
                a.push(value);
                ops += 1;
            };
            for (&bucket, groups) in delta {
                for (group, cells) in groups {
                    for (m, cell) in view.measures.iter().zip(cells) {
                        let field = |part| CounterField::encode(bucket, &m.name, part, group);
                        let agg = match cell {
                            MeasureDelta::Agg(agg) => agg,
                            MeasureDelta::Distinct(Distinct::Values(vs)) => {
                                if !vs.is_empty() {
                                    let suffix = SketchField::encode(bucket, &m.name, group);
                                    let mut added = Hll::new();
                                    vs.iter().for_each(|v| added.add(v));
                                    sketch_log::write_line(&mut sketch_body, &suffix, &added);
                                    op(&mut a, b"P", suffix, vs.len().to_string().into_bytes());
                                    a.extend(vs.iter().map(|v| v.to_vec()));
                                }
                                continue;
                            }
                            MeasureDelta::Distinct(Distinct::Sketch(h)) => {
                                if !h.is_empty() {
                                    let suffix = SketchField::encode(bucket, &m.name, group);
                                    sketch_log::write_line(&mut sketch_body, &suffix, h);
                                    op(&mut a, b"H", suffix, h.to_redis_bytes());
                                }
                                continue;
                            }
                        };
                        if let Agg::Quantiles(q) = agg {
                            if !q.is_empty() {
                                let suffix = SketchField::encode(bucket, &m.name, group);
                                delta_log::write_line(&mut log_body, &suffix, q);
                                let key = format!("{quantile_prefix}{suffix}");
                                let pairs: Vec<(Bucket, u64)> = q.buckets().collect();
                                op(&mut a, b"Q", key, pairs.len().to_string().into_bytes());
                                for (b, n) in pairs {
                                    a.push(b.encode().into_bytes());
                                    a.push(n.to_string().into_bytes());
                                }
                            }
                            continue;
                        }
                        // Each counter field also goes into the counter log's
                        // list, in the order of the ops (the script adds the
                        // values).
                        let (code, part, value) = match *agg {
                            Agg::Count(n) => (b"I", Part::Count, n.to_string()),
                            Agg::Sum { int, float } => {
                                let (lo, hi) = split_sum(int);
                                let (f, carry) = (field(Part::SumInt), field(Part::SumCarry));
                                counter_log::write_field(&mut counter_fields, &f);
                                counter_log::write_field(&mut counter_fields, &carry);
                                op(&mut a, b"S", f, carry.into_bytes());
                                a.push(lo.to_string().into_bytes());
                                a.push(hi.to_string().into_bytes());
                                if float == 0.0 {
                                    continue;
                                }
                                (b"F", Part::SumFloat, float.to_string())
                            }
                            Agg::Min(Some(v)) => (b"N", Part::Min, v.to_string()),
                            Agg::Max(Some(v)) => (b"X", Part::Max, v.to_string()),
                            Agg::Min(None)
                            | Agg::Max(None)
                            | Agg::Distinct(_)
                            | Agg::Quantiles(_) => continue,
                        };
                        let f = field(part);
                        counter_log::write_field(&mut counter_fields, &f);
                        op(&mut a, code, f, value.into_bytes());
                    }
                }
            }
            a[count_at] = ops.to_string().into_bytes();
            a[log_body_at] = log_body.into_bytes();
            a[sketch_body_at] = sketch_body.into_bytes();
            a[counter_fields_at] = counter_fields.into_bytes();
            // The cells written, for readers that follow changes by version.
            a.push(
                delta
                    .values()
                    .map(|g| g.len())
                    .sum::<usize>()
                    .to_string()
                    .into_bytes(),
            );
            for (&bucket, groups) in delta {
                a.extend(
                    groups
                        .keys()
                        .map(|group| CellMember::encode(bucket, group).into_bytes()),
                );
            }
        }
        a
    }

    /// Another handle on the applier's Redis connection.
    pub fn connection(&self) -> RedisCon {
        self.con.clone()
    }

    /// Where each partition group's keys live.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The stored offset of a partition, if any.
    pub async fn stored_offset(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, SpeedError> {
        let v: Option<i64> = redis::cmd("HGET")
            .arg(self.layout.keys_of(partition).offsets())
            .arg(Keys::offset_field(topic, partition))
            .query_async(&mut self.con)
            .await?;
        Ok(v)
    }
}

fn parse_reply(v: &Value, ranges: usize) -> Result<Outcome, SpeedError> {
    let bad = || SpeedError::ScriptReply(format!("{v:?}"));
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let num = |x: &Value| match x {
        Value::Int(n) => Ok(*n),
        _ => Err(bad()),
    };
    match items.first().map(num).transpose()? {
        Some(1) => Ok(Outcome::Applied),
        Some(code @ 2..=4) => {
            let Some(Value::BulkString(reason)) = items.get(1) else {
                return Err(bad());
            };
            let reason = String::from_utf8_lossy(reason).into_owned();
            Err(match code {
                2 => SpeedError::ForeignValue(reason),
                3 => SpeedError::PartialLoss(reason),
                _ => SpeedError::OtherDefinition(reason),
            })
        }
        Some(0) if items.len() == ranges + 1 => Ok(Outcome::Failed {
            stored: items[1..]
                .iter()
                .map(|x| num(x).map(|n| (n >= 0).then_some(n)))
                .collect::<Result<_, _>>()?,
        }),
        _ => Err(bad()),
    }
}
