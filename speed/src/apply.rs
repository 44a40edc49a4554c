//! Writing chunks to Redis through the fencing script.
//!
//! One [`Chunk`] becomes one `EVALSHA` of `apply.lua`: the partition's deltas
//! and its new offset are applied together, and only if Redis's stored offset
//! equals the chunk's start. A replay after a crash, or a zombie member after a
//! rebalance, therefore writes nothing ([`Outcome::Fenced`]); a Redis that lost
//! its memory is noticed ([`Outcome::Reset`]) instead of being silently
//! continued from the middle. All chunks of one flush go in one pipeline.

use redis::aio::ConnectionManager;
use redis::{RedisError, Value};

use tally_core::agg::Agg;
use tally_core::config::Config;
use tally_core::keys::{CounterField, Keys, Part, SketchField};
use tally_core::time::EpochClock;

use crate::delta::{Chunk, Folder};
use crate::error::SpeedError;

const SCRIPT: &str = include_str!("apply.lua");

/// What happened to one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; Redis now stores `end`.
    Applied { end: i64 },
    /// Not applied: Redis stores `stored`, not the chunk's start.
    Fenced { stored: i64 },
    /// Not applied: Redis has no offset and the chunk is not a rebuild start.
    Reset,
}

/// The Redis side of the speed layer.
pub struct Applier {
    con: ConnectionManager,
    keys: Keys,
    clock: EpochClock,
    retention_ms: i64,
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
            clock: cfg.epochs.clock(),
            retention_ms: cfg.epochs.retention.0,
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

    /// Apply every chunk in one pipeline; outcomes in the same order.
    pub async fn apply(
        &mut self,
        chunks: &[Chunk],
        folder: &Folder,
        now_ms: i64,
    ) -> Result<Vec<Outcome>, SpeedError> {
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for c in chunks {
            pipe.cmd("EVALSHA")
                .arg(&self.sha)
                .arg(0)
                .arg(self.args(c, folder, now_ms));
        }
        let replies: Vec<Value> = match pipe.query_async(&mut self.con).await {
            Ok(r) => r,
            Err(e) if is_noscript(&e) => {
                // Redis restarted and lost its script cache: load again, once.
                self.load_script().await?;
                return Box::pin(self.apply(chunks, folder, now_ms)).await;
            }
            Err(e) => return Err(e.into()),
        };
        replies.iter().map(parse_reply).collect()
    }

    /// The script's ARGV for one chunk.
    fn args(&self, c: &Chunk, folder: &Folder, now_ms: i64) -> Vec<Vec<u8>> {
        let mut a: Vec<Vec<u8>> = vec![
            self.keys.offsets().into_bytes(),
            Keys::offset_field(&c.topic, c.partition).into_bytes(),
            c.start.to_string().into_bytes(),
            c.end.to_string().into_bytes(),
            if c.fresh {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
            now_ms.to_string().into_bytes(),
            format!("{}:tmp", self.keys.prefix()).into_bytes(),
        ];
        for (id, delta) in &c.slices {
            let view = folder.view(id.view);
            let name = view.name.as_str();
            let expire_at = self.clock.end(id.epoch) + self.retention_ms;
            a.push(b"S".to_vec());
            a.push(self.keys.counters(name, id.epoch, id.day).into_bytes());
            a.push(self.keys.sketch_index(name, id.epoch, id.day).into_bytes());
            a.push(self.keys.sketch_prefix(name, id.epoch, id.day).into_bytes());
            a.push(self.keys.slices(name).into_bytes());
            a.push(Keys::slice_member(id.epoch, id.day).into_bytes());
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
                for (group, aggs) in groups {
                    for (m, agg) in view.measures.iter().zip(aggs) {
                        let field = |part| CounterField::encode(bucket, &m.name, part, group);
                        match agg {
                            Agg::Count(n) => {
                                op(&mut a, b"I", field(Part::Count), n.to_string().into_bytes())
                            }
                            Agg::Sum { int, float } => {
                                op(
                                    &mut a,
                                    b"I",
                                    field(Part::SumInt),
                                    int.to_string().into_bytes(),
                                );
                                if *float != 0.0 {
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
                            Agg::Min(None) | Agg::Max(None) => {}
                            Agg::Distinct(h) if !h.is_empty() => op(
                                &mut a,
                                b"H",
                                SketchField::encode(bucket, &m.name, group),
                                h.to_redis_bytes(),
                            ),
                            Agg::Distinct(_) => {}
                        }
                    }
                }
            }
            a[count_at] = ops.to_string().into_bytes();
        }
        a
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

fn parse_reply(v: &Value) -> Result<Outcome, SpeedError> {
    let bad = || SpeedError::ScriptReply(format!("{v:?}"));
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let num = |i: usize| match items.get(i) {
        Some(Value::Int(n)) => Ok(*n),
        _ => Err(bad()),
    };
    match num(0)? {
        1 => Ok(Outcome::Applied { end: num(1)? }),
        0 => Ok(Outcome::Fenced { stored: num(1)? }),
        -1 => Ok(Outcome::Reset),
        _ => Err(bad()),
    }
}
