//! Reading the speed layer's deltas from Redis.
//!
//! Per query, [`SpeedReader::read`] lists the view's slices (`P:s:{view}`),
//! keeps those with `epoch >= cut` (all of them when there is no cut yet) whose
//! event-time day overlaps the query, then fetches in one pipeline the counter
//! hash of every kept slice (and, when a distinct measure is asked for, its
//! sketch index), and in a second pipeline the HyperLogLog keys it needs.
//! Fields are decoded per [`tally_core::keys`] into [`Delta`]s.
//!
//! Guarantees: every call is bounded by a timeout; an unreachable or slow Redis
//! is a [`SpeedError`], which the query turns into `"degraded": ["redis"]`
//! rather than a failure. Fields that do not parse (written by a future version,
//! or by hand) are skipped and counted, never fatal.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tally_core::agg::{Agg, AggKind};
use tally_core::hll::Hll;
use tally_core::keys::{CounterField, Keys, Part, SketchField};
use tally_core::time::Epoch;
use tally_core::view::ViewDef;

/// What a query needs from the speed layer.
#[derive(Debug, Clone)]
pub struct SpeedRequest<'a> {
    pub view: &'a ViewDef,
    /// Slices with `epoch < cut` are ignored; `None` = keep all.
    pub cut: Option<Epoch>,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Which measures (indices into the view's) are wanted.
    pub measures: &'a [usize],
}

/// One decoded delta: a part of one measure of one (bucket, group).
#[derive(Debug, Clone)]
pub struct Delta {
    pub bucket_ms: i64,
    /// The group's JSON array text, as stored.
    pub group: String,
    /// Index of the measure in the view.
    pub measure: usize,
    pub agg: Agg,
}

/// What one read returned.
#[derive(Debug, Clone, Default)]
pub struct SpeedRead {
    pub deltas: Vec<Delta>,
    /// Slices read (epoch >= cut, day in range).
    pub slices: usize,
    /// Fields or sketches that did not parse.
    pub skipped: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// A lazily connected, auto-reconnecting Redis reader.
#[derive(Clone)]
pub struct SpeedReader {
    conn: ConnectionManager,
    keys: Keys,
    timeout: Duration,
}

impl std::fmt::Debug for SpeedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeedReader")
            .field("prefix", &self.keys.prefix())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SpeedReader {
    /// Does not connect: the first command does, and a lost connection is
    /// re-established in the background.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg)?;
        Ok(SpeedReader {
            conn,
            keys: Keys::new(prefix),
            timeout,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SpeedError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SpeedError::Timeout(self.timeout)),
        }
    }

    /// Run one pipeline (bounded by the timeout).
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, SpeedError> {
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async(&mut conn)).await
    }

    /// The deltas a query needs.
    pub async fn read(&self, req: &SpeedRequest<'_>) -> Result<SpeedRead, SpeedError> {
        let view = &req.view.name;
        let first_day = tally_core::time::day_of(req.from_ms);
        let last_day = tally_core::time::day_of(req.to_ms - 1);
        let mut p = redis::pipe();
        p.cmd("ZRANGE").arg(self.keys.slices(view)).arg(0).arg(-1);
        let (members,): (Vec<String>,) = self.query(&p).await?;
        let slices: Vec<(Epoch, i64)> = members
            .iter()
            .filter_map(|m| Keys::parse_slice_member(m))
            .filter(|&(e, d)| req.cut.is_none_or(|c| e >= c) && d >= first_day && d <= last_day)
            .collect();
        let mut out = SpeedRead {
            slices: slices.len(),
            ..Default::default()
        };
        if slices.is_empty() {
            return Ok(out);
        }
        let wanted = |name: &str| -> Option<usize> {
            let (i, _) = req.view.measure(name)?;
            req.measures.contains(&i).then_some(i)
        };
        let want_distinct = req
            .measures
            .iter()
            .any(|&i| req.view.measures[i].agg == AggKind::Distinct);
        let mut p = redis::pipe();
        for &(e, d) in &slices {
            p.cmd("HGETALL").arg(self.keys.counters(view, e, d));
            if want_distinct {
                p.cmd("SMEMBERS").arg(self.keys.sketch_index(view, e, d));
            }
        }
        let replies: Vec<redis::Value> = self.query(&p).await?;
        let mut replies = replies.into_iter();
        let mut sketch_keys: Vec<(String, i64, String, usize)> = Vec::new();
        let in_range = |b: i64| b >= req.from_ms && b < req.to_ms;
        for &(e, d) in &slices {
            let hash: std::collections::HashMap<String, String> = match replies.next() {
                Some(v) => redis::from_redis_value(v).unwrap_or_default(),
                None => Default::default(),
            };
            for (field, value) in &hash {
                let Some(f) = CounterField::parse(field) else {
                    out.skipped += 1;
                    continue;
                };
                if !in_range(f.bucket_ms) {
                    continue;
                }
                let Some(mi) = wanted(f.measure) else {
                    continue;
                };
                match part_agg(req.view.measures[mi].agg, f.part, value) {
                    Some(agg) => out.deltas.push(Delta {
                        bucket_ms: f.bucket_ms,
                        group: f.group.to_owned(),
                        measure: mi,
                        agg,
                    }),
                    None => out.skipped += 1,
                }
            }
            if want_distinct {
                let members: Vec<String> = match replies.next() {
                    Some(v) => redis::from_redis_value(v).unwrap_or_default(),
                    None => Vec::new(),
                };
                for m in members {
                    let Some(f) = SketchField::parse(&m) else {
                        out.skipped += 1;
                        continue;
                    };
                    let Some(mi) = wanted(f.measure) else {
                        continue;
                    };
                    if !in_range(f.bucket_ms) || req.view.measures[mi].agg != AggKind::Distinct {
                        continue;
                    }
                    let key = format!("{}{m}", self.keys.sketch_prefix(view, e, d));
                    sketch_keys.push((key, f.bucket_ms, f.group.to_owned(), mi));
                }
            }
        }
        for chunk in sketch_keys.chunks(512) {
            let mut p = redis::pipe();
            for (key, ..) in chunk {
                p.cmd("GET").arg(key);
            }
            let values: Vec<Option<Vec<u8>>> = self.query(&p).await?;
            for ((_, bucket_ms, group, mi), bytes) in chunk.iter().zip(values) {
                // An expired or missing sketch contributes nothing.
                let Some(bytes) = bytes else { continue };
                match Hll::from_redis_bytes(&bytes) {
                    Ok(h) => out.deltas.push(Delta {
                        bucket_ms: *bucket_ms,
                        group: group.clone(),
                        measure: *mi,
                        agg: Agg::Distinct(h),
                    }),
                    Err(_) => out.skipped += 1,
                }
            }
        }
        Ok(out)
    }
}

/// The aggregate one counter field holds, if its part fits the measure's kind.
fn part_agg(kind: AggKind, part: Part, value: &str) -> Option<Agg> {
    let value = value.trim();
    Some(match (kind, part) {
        (AggKind::Count, Part::Count) => Agg::Count(value.parse::<i64>().ok()?.max(0) as u64),
        (AggKind::Sum, Part::SumInt) => Agg::Sum {
            int: value.parse().ok()?,
            float: 0.0,
        },
        (AggKind::Sum, Part::SumCarry) => Agg::Sum {
            int: i128::from(value.parse::<i64>().ok()?) * tally_core::keys::SUM_CARRY_UNIT,
            float: 0.0,
        },
        (AggKind::Sum, Part::SumFloat) => Agg::Sum {
            int: 0,
            float: value.parse().ok()?,
        },
        (AggKind::Min, Part::Min) => Agg::Min(Some(value.parse().ok()?)),
        (AggKind::Max, Part::Max) => Agg::Max(Some(value.parse().ok()?)),
        _ => return None,
    })
}
