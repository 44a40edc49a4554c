//! Writing chunks to Redis through the fencing script.
//!
//! One [`Chunk`] becomes one `EVALSHA` of `apply.lua`: the deltas and the new
//! offsets of every partition in it are applied together, and only if Redis
//! stores each partition's start (or nothing, for a rebuild start). A replay
//! after a crash, or a zombie member after a rebalance, therefore writes
//! nothing; nor does a Redis that lost its memory, which is noticed instead of
//! being silently continued from the middle. [`Outcome::Failed`] says what
//! Redis stores for each range, which is where the consume loop resumes. A
//! Redis that lost only part of the state (an offset but not its counters,
//! or a slice before its time) is reported ([`SpeedError::PartialLoss`]),
//! never rebuilt over (see the script's header).

use redis::aio::ConnectionManager;
use redis::{RedisError, Value};

use tally_core::agg::Agg;
use tally_core::config::Config;
use tally_core::keys::{split_sum, CellMember, CounterField, Keys, Part, SketchField};
use tally_core::time::EpochGrid;

use crate::delta::{Chunk, Distinct, Folder, MeasureDelta};
use crate::error::SpeedError;

const SCRIPT: &str = include_str!("apply.lua");

/// What happened to one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; Redis now stores every range's end.
    Applied,
    /// Nothing applied: per range, the offset Redis stores (`None`: nothing),
    /// which differs from the range's start for at least one range.
    Failed { stored: Vec<Option<i64>> },
}

/// Whether an error from [`Applier::apply`] may pass if the call is tried
/// again: the connection, a timeout, or a Redis that is loading, busy or out of
/// memory. Anything else (a script error, a refused command) would fail the
/// same way every time. Either way nothing was applied: the script checks
/// everything before it writes.
pub(crate) fn is_transient(e: &SpeedError) -> bool {
    match e {
        SpeedError::Redis(e) => {
            e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || matches!(
                    e.code(),
                    Some("OOM" | "BUSY" | "LOADING" | "TRYAGAIN" | "MASTERDOWN" | "NOSCRIPT")
                )
        }
        _ => false,
    }
}

/// The Redis side of the speed layer.
pub struct Applier {
    con: ConnectionManager,
    keys: Keys,
    grid: EpochGrid,
    retention_ms: i64,
    /// Each view's name and definition fingerprint.
    definitions: Vec<(String, String)>,
    sha: String,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier").field("keys", &self.keys).finish()
    }
}

impl Applier {
    pub async fn connect(cfg: &Config) -> Result<Applier, SpeedError> {
        let client = redis::Client::open(cfg.redis.url.as_str())?;
        // A flush after a long outage (or a rebuild) can carry large chunks:
        // the client's default 500 ms would time out calls Redis completes,
        // turning every retry into a fenced replay. Fencing keeps a timed-out
        // call safe either way; this keeps it rare.
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(10)));
        let con = ConnectionManager::new_with_config(client, manager).await?;
        let mut applier = Applier {
            con,
            keys: Keys::new(&cfg.redis.key_prefix),
            grid: cfg.epochs.grid(),
            retention_ms: cfg.epochs.retention.0,
            definitions: cfg
                .views
                .iter()
                .map(|v| (v.name.clone(), v.fingerprint()))
                .collect(),
            sha: String::new(),
        };
        applier.load_script().await?;
        Ok(applier)
    }

    async fn load_script(&mut self) -> Result<(), SpeedError> {
        self.sha = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query_async(&mut self.con)
            .await?;
        Ok(())
    }

    /// Apply one chunk.
    pub async fn apply(
        &mut self,
        chunk: &Chunk,
        folder: &Folder,
        now_ms: i64,
    ) -> Result<Outcome, SpeedError> {
        let args = self.args(chunk, folder, now_ms);
        let reply: Value = match redis::cmd("EVALSHA")
            .arg(&self.sha)
            .arg(0)
            .arg(&args)
            .query_async(&mut self.con)
            .await
        {
            Ok(r) => r,
            Err(e) if is_noscript(&e) => {
                // Redis restarted and lost its script cache: load again, once.
                self.load_script().await?;
                redis::cmd("EVALSHA")
                    .arg(&self.sha)
                    .arg(0)
                    .arg(&args)
                    .query_async(&mut self.con)
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        parse_reply(&reply, chunk.ranges.len())
    }

    /// The script's ARGV for one chunk.
    fn args(&self, c: &Chunk, folder: &Folder, now_ms: i64) -> Vec<Vec<u8>> {
        let mut a: Vec<Vec<u8>> = vec![
            self.keys.offsets().into_bytes(),
            c.ranges.len().to_string().into_bytes(),
        ];
        for r in &c.ranges {
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
        a.push(format!("{}:tmp", self.keys.prefix()).into_bytes());
        a.push(self.keys.version().into_bytes());
        a.push(self.keys.seen().into_bytes());
        a.push(self.keys.definitions().into_bytes());
        a.push(self.definitions.len().to_string().into_bytes());
        for (name, fp) in &self.definitions {
            a.push(name.clone().into_bytes());
            a.push(fp.clone().into_bytes());
        }
        for (id, delta) in &c.slices {
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
            a.push(self.keys.counters(name, id.epoch, id.day).into_bytes());
            a.push(self.keys.cells(name, id.epoch, id.day).into_bytes());
            a.push(self.keys.sketch_prefix(name, id.epoch, id.day).into_bytes());
            a.push(self.keys.slices(name).into_bytes());
            a.push(Keys::slice_member(id.epoch, id.day).into_bytes());
            a.push(self.keys.slice_versions(name).into_bytes());
            a.push(expire_at.to_string().into_bytes());
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
                                    op(&mut a, b"P", suffix, vs.len().to_string().into_bytes());
                                    a.extend(vs.iter().map(|v| v.to_vec()));
                                }
                                continue;
                            }
                            MeasureDelta::Distinct(Distinct::Sketch(h)) => {
                                if !h.is_empty() {
                                    let suffix = SketchField::encode(bucket, &m.name, group);
                                    op(&mut a, b"H", suffix, h.to_redis_bytes());
                                }
                                continue;
                            }
                        };
                        match *agg {
                            Agg::Count(n) => {
                                op(&mut a, b"I", field(Part::Count), n.to_string().into_bytes())
                            }
                            Agg::Sum { int, float } => {
                                let (lo, hi) = split_sum(int);
                                op(
                                    &mut a,
                                    b"S",
                                    field(Part::SumInt),
                                    field(Part::SumCarry).into_bytes(),
                                );
                                a.push(lo.to_string().into_bytes());
                                a.push(hi.to_string().into_bytes());
                                if float != 0.0 {
                                    op(
                                        &mut a,
                                        b"F",
                                        field(Part::SumFloat),
                                        float.to_string().into_bytes(),
                                    );
                                }
                            }
                            Agg::Min(Some(v)) => {
                                op(&mut a, b"N", field(Part::Min), v.to_string().into_bytes())
                            }
                            Agg::Max(Some(v)) => {
                                op(&mut a, b"X", field(Part::Max), v.to_string().into_bytes())
                            }
                            Agg::Min(None) | Agg::Max(None) | Agg::Distinct(_) => {}
                        }
                    }
                }
            }
            a[count_at] = ops.to_string().into_bytes();
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
    pub fn connection(&self) -> ConnectionManager {
        self.con.clone()
    }

    /// The stored offset of a partition, if any.
    pub async fn stored_offset(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, SpeedError> {
        let v: Option<i64> = redis::cmd("HGET")
            .arg(self.keys.offsets())
            .arg(Keys::offset_field(topic, partition))
            .query_async(&mut self.con)
            .await?;
        Ok(v)
    }
}

fn is_noscript(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
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
