//! The Redis reads behind the speed mirror, per the versioned layout of
//! [`tally_core::keys`]: the flush version, each slice's version, the cells a
//! slice changed since a version, and the values of those cells. Each read
//! is one partition group's (`keys`): one pipeline, one cluster slot.
//!
//! A quantile sketch is a hash of bucket → count per cell and measure
//! (`HGETALL`); a field that does not parse is skipped and counted. A copy
//! that has a slice already reads what the flushes since added to its
//! sketches from the slice's quantile log instead
//! ([`tally_core::quantile::delta_log`]), and the sketches whole only when
//! the log does not reach back to its version. A whole read is one
//! transaction (`MULTI`/`EXEC`, one slot) with the slice's version and the
//! log past the version the copy records, so that what later flushes added
//! is taken out again and the copy can follow the log from then on.
//! Distinct sketches likewise: a copy that has a slice merges the
//! registers the flushes since set, from the slice's sketch log
//! ([`tally_core::hll::sketch_log`]), and reads them whole only when the
//! log does not reach back to its version. Counters likewise: the slice's
//! counter log ([`tally_core::counter_log`]) holds the values each flush
//! wrote, read with the changes, so that a sync whose logs all chain needs
//! no second round trip ([`Changes::counters_through`]).
//!
//! Guarantee: values that do not parse (written by hand, or by another
//! version) read as the identity of their measure and are counted as
//! skipped, never fatal.

use std::collections::HashMap;

use tally_core::agg::{Agg, AggKind};
use tally_core::counter_log;
use tally_core::hll::{sketch_log, Hll};
use tally_core::keys::{
    CellMember, CounterField, Keys, Part, SketchField, BORN_FIELD, SUM_CARRY_UNIT, VERSION_FIELD,
};
use tally_core::quantile::{delta_log, Bucket, QuantileSketch};
use tally_core::time::Epoch;
use tally_core::view::ViewDef;

use super::conn::{RedisReadError, RedisReader};

/// Cells read per command.
const CELLS_PER_COMMAND: usize = 500;

/// What a sync reads first: the last applied flush's version, when the
/// counter was born, each view's definition fingerprint as the speed layer
/// wrote it, each view's slices with their versions, and what changed in
/// the slices the copy already holds. One round trip, so that a sync after
/// a flush usually needs just one more (the changed cells' values): under
/// load Redis is running a flush's script most of the time, and each wait
/// for it can last a whole script. Everything after the flush version is
/// read after it, so at least as new.
#[derive(Debug, Default)]
pub(crate) struct Head {
    pub version: Option<u64>,
    pub born: Option<i64>,
    pub definitions: HashMap<String, String>,
    /// Per view (in the order asked), its slices' versions by (epoch, day).
    pub slices: Vec<HashMap<(Epoch, i64), u64>>,
    /// Per view, the changes of the slices `known` named, in that order.
    pub changes: Vec<Vec<Changes>>,
}

/// Read one partition group's [`Head`] with the slices of `views`, and the
/// changes of the slices the copy holds (`known`, per view).
pub(crate) async fn head(
    redis: &RedisReader,
    keys: &Keys,
    views: &[&str],
    known: &[Vec<Since>],
) -> Result<Head, RedisReadError> {
    let mut p = redis::pipe();
    p.cmd("HMGET")
        .arg(keys.version())
        .arg(VERSION_FIELD)
        .arg(BORN_FIELD);
    p.cmd("HGETALL").arg(keys.definitions());
    for v in views {
        p.cmd("HGETALL").arg(keys.slice_versions(v));
    }
    for (v, slices) in views.iter().zip(known) {
        push_changes(&mut p, keys, v, slices);
    }
    let replies: Vec<redis::Value> = redis.query(&p).await?;
    let mut replies = replies.into_iter();
    let (version, born): (Option<u64>, Option<i64>) = parse(replies.next())?;
    let definitions: HashMap<String, String> = parse(replies.next())?;
    let slices = views
        .iter()
        .map(|_| {
            let m: HashMap<String, u64> = parse(replies.next())?;
            Ok(m.into_iter()
                .filter_map(|(k, v)| Some((Keys::parse_slice_member(&k)?, v)))
                .collect())
        })
        .collect::<Result<_, RedisReadError>>()?;
    let changes = known
        .iter()
        .map(|slices| take_changes(&mut replies, slices))
        .collect::<Result<_, _>>()?;
    Ok(Head {
        version,
        born,
        definitions,
        slices,
        changes,
    })
}

/// A pipeline reply as `T` (a missing reply as Nil).
fn parse<T: redis::FromRedisValue>(reply: Option<redis::Value>) -> Result<T, RedisReadError> {
    Ok(redis::from_redis_value(reply.unwrap_or(redis::Value::Nil))
        .map_err(redis::RedisError::from)?)
}

/// What changed in one slice since a version.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// The cells written after the version.
    pub cells: Vec<String>,
    /// The slice's quantile log past the version (entries with their
    /// versions, in order), when asked.
    log: Option<Vec<(Vec<u8>, u64)>>,
    /// The slice's sketch log past the version, likewise.
    sketch_log: Option<Vec<(Vec<u8>, u64)>>,
    /// The slice's counter log past the version, likewise.
    counter_log: Option<Vec<(Vec<u8>, u64)>>,
}

impl Changes {
    /// What the flushes from `since` to `until` added to the slice's
    /// quantile sketches, by [`SketchField`] text; `None`: the log was not
    /// asked, or does not chain from `since` to `until` (read the sketches
    /// whole).
    pub(crate) fn quantiles_added(
        &self,
        since: u64,
        until: u64,
    ) -> Option<HashMap<String, QuantileSketch>> {
        let log = self.log.as_ref()?;
        let upto = log.partition_point(|&(_, v)| v <= until);
        delta_log::deltas_between(&log[..upto], since, until)
    }

    /// What the flushes from `since` to `until` added to the slice's
    /// distinct sketches, by [`SketchField`] text; `None`: the log was not
    /// asked, or does not chain (read the sketches whole).
    pub(crate) fn sketches_added(&self, since: u64, until: u64) -> Option<HashMap<String, Hll>> {
        let log = self.sketch_log.as_ref()?;
        let upto = log.partition_point(|&(_, v)| v <= until);
        sketch_log::added_between(&log[..upto], since, until)
    }

    /// Each counter field's value as of `until` or later, by
    /// [`CounterField`] text, for the fields the flushes after `since`
    /// wrote; `None`: the log was not asked, or does not chain from
    /// `since` through `until` (read the counters whole).
    pub(crate) fn counters_through(&self, since: u64, until: u64) -> Option<HashMap<&str, &str>> {
        counter_log::values_through(self.counter_log.as_ref()?, since, until)
    }
}

/// What a slice's logs say the flushes since the copy's version added, by
/// [`SketchField`] text; `None` where a log does not chain (read those
/// sketches whole).
#[derive(Debug, Default)]
pub(crate) struct Added {
    pub quantiles: Option<HashMap<String, QuantileSketch>>,
    pub distinct: Option<HashMap<String, Hll>>,
}

/// A slice to read the changes of: those after version `since`, its
/// quantile log past `since` when `log` (the copy's quantile sketches are
/// exactly at `since`, so the log may be added to them), and its sketch
/// and counter logs past `since` when `sketch_log` and `counter_log` (the
/// copy holds the slice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Since {
    pub epoch: Epoch,
    pub day: i64,
    pub since: u64,
    pub log: bool,
    pub sketch_log: bool,
    pub counter_log: bool,
}

/// Ask for each slice's cells written after `since`, and, when asked, its
/// quantile, sketch and counter logs past `since`.
fn push_changes(p: &mut redis::Pipeline, keys: &Keys, view: &str, slices: &[Since]) {
    for s in slices {
        p.cmd("ZRANGEBYSCORE")
            .arg(keys.cells(view, s.epoch, s.day))
            .arg(format!("({}", s.since))
            .arg("+inf");
        let logs = [
            (s.log, keys.quantile_log(view, s.epoch, s.day)),
            (s.sketch_log, keys.sketch_log(view, s.epoch, s.day)),
            (s.counter_log, keys.counter_log(view, s.epoch, s.day)),
        ];
        for (_, log) in logs.into_iter().filter(|(asked, _)| *asked) {
            p.cmd("ZRANGEBYSCORE")
                .arg(log)
                .arg(format!("({}", s.since))
                .arg("+inf")
                .arg("WITHSCORES");
        }
    }
}

/// The replies of [`push_changes`] for `slices`.
fn take_changes(
    replies: &mut impl Iterator<Item = redis::Value>,
    slices: &[Since],
) -> Result<Vec<Changes>, RedisReadError> {
    slices
        .iter()
        .map(|s| {
            let cells: Vec<String> = parse(replies.next())?;
            let log = s.log.then(|| log_entries(replies.next()));
            let sketch_log = s.sketch_log.then(|| log_entries(replies.next()));
            let counter_log = s.counter_log.then(|| log_entries(replies.next()));
            Ok(Changes {
                cells,
                log,
                sketch_log,
                counter_log,
            })
        })
        .collect()
}

/// For each slice: its cells written after `since`, and, when asked, its
/// quantile, sketch and counter logs past `since`.
pub(crate) async fn changes(
    redis: &RedisReader,
    keys: &Keys,
    view: &str,
    slices: &[Since],
) -> Result<Vec<Changes>, RedisReadError> {
    let mut p = redis::pipe();
    push_changes(&mut p, keys, view, slices);
    let replies: Vec<redis::Value> = redis.query(&p).await?;
    take_changes(&mut replies.into_iter(), slices)
}

/// A log's entries with their versions, from a `ZRANGEBYSCORE …
/// WITHSCORES` reply (none when it does not parse: the chain check fails).
fn log_entries(reply: Option<redis::Value>) -> Vec<(Vec<u8>, u64)> {
    let entries: Vec<(Vec<u8>, f64)> = reply
        .and_then(|v| redis::from_redis_value(v).ok())
        .unwrap_or_default();
    entries.into_iter().map(|(m, v)| (m, v as u64)).collect()
}

/// One cell as read.
pub(crate) struct CellValue {
    pub bucket: i64,
    /// The group's JSON text.
    pub group: String,
    /// One aggregate per measure.
    pub aggs: Box<[Agg]>,
}

/// The counter fields of one measure kind, in the order they are read.
fn parts(kind: AggKind) -> &'static [Part] {
    match kind {
        AggKind::Count => &[Part::Count],
        AggKind::Sum => &[Part::SumInt, Part::SumCarry, Part::SumFloat],
        AggKind::Min => &[Part::Min],
        AggKind::Max => &[Part::Max],
        AggKind::Distinct | AggKind::Quantiles => &[],
    }
}

/// The values of `cells` (members of the slice's cell set) of one slice,
/// whose version in Redis is `until`; with `added.quantiles`, its quantile
/// measures are those deltas (empty where none) rather than the sketches
/// read whole; likewise its distinct measures with `added.distinct`.
///
/// Sketches read whole are read in one transaction with the slice's version
/// and its quantile log past `until`, and what flushes after `until` added
/// is taken back out of them: they are then exactly the slice's at `until`,
/// the version the copy records and adds the log to next, however busy the
/// slice. Counters and distinct sketches are read as they are (newer than
/// `until` is fine: they replace the copy's, and the cells written after
/// `until` are read again next time).
///
/// Returns the cells, how many values did not parse, and whether the
/// quantile sketches are exactly those of version `until` (not when the log
/// does not reach from `until` to the version read, which is rare: the next
/// sync then reads them whole again).
pub(crate) async fn read_cells(
    redis: &RedisReader,
    keys: &Keys,
    view: &ViewDef,
    slice: &Since,
    until: u64,
    cells: &[String],
    added: Added,
) -> Result<(Vec<CellValue>, usize, bool), RedisReadError> {
    let Added {
        quantiles: mut quantiles_added,
        distinct: mut sketches_added,
    } = added;
    let Since { epoch, day, .. } = *slice;
    let parsed: Vec<CellMember<'_>> = cells.iter().filter_map(|c| CellMember::parse(c)).collect();
    let mut skipped = cells.len() - parsed.len();
    if parsed.is_empty() {
        return Ok((Vec::new(), skipped, true));
    }
    let counters = keys.counters(&view.name, epoch, day);
    let sketch_prefix = keys.sketch_prefix(&view.name, epoch, day);
    let quantile_prefix = keys.quantile_prefix(&view.name, epoch, day);
    let n_fields: usize = view.measures.iter().map(|m| parts(m.agg).len()).sum();
    let distinct = view.distinct_measures();
    let quantiles = view.quantile_measures();
    // Whole sketches are read only without the deltas.
    let whole_quantiles: &[&str] = if quantiles_added.is_some() {
        &[]
    } else {
        &quantiles
    };
    let mut p = redis::pipe();
    if !whole_quantiles.is_empty() {
        p.atomic();
        p.cmd("HGET")
            .arg(keys.slice_versions(&view.name))
            .arg(Keys::slice_member(epoch, day));
        p.cmd("ZRANGEBYSCORE")
            .arg(keys.quantile_log(&view.name, epoch, day))
            .arg(format!("({until}"))
            .arg("+inf")
            .arg("WITHSCORES");
    }
    for chunk in parsed.chunks(CELLS_PER_COMMAND) {
        if n_fields > 0 {
            let cmd = p.cmd("HMGET").arg(&counters);
            for c in chunk {
                for m in &view.measures {
                    for &part in parts(m.agg) {
                        cmd.arg(CounterField::encode(c.bucket_ms, &m.name, part, c.group));
                    }
                }
            }
        }
        if !distinct.is_empty() && sketches_added.is_none() {
            let cmd = p.cmd("MGET");
            for c in chunk {
                for m in &distinct {
                    cmd.arg(format!(
                        "{sketch_prefix}{}",
                        SketchField::encode(c.bucket_ms, m, c.group)
                    ));
                }
            }
        }
        for c in chunk {
            for m in whole_quantiles {
                p.cmd("HGETALL").arg(format!(
                    "{quantile_prefix}{}",
                    SketchField::encode(c.bucket_ms, m, c.group)
                ));
            }
        }
    }
    let replies: Vec<redis::Value> = redis.query(&p).await?;
    let mut replies = replies.into_iter();
    // What flushes after `until` added to the sketches read whole, to take
    // out of them; `None`: unknown (the log does not reach).
    let mut after: Option<HashMap<String, QuantileSketch>> = Some(HashMap::new());
    if !whole_quantiles.is_empty() {
        let read_at: Option<u64> = replies.next().and_then(|v| redis::from_redis_value(v).ok());
        let entries = log_entries(replies.next());
        after = match read_at {
            Some(v) if v == until => Some(HashMap::new()),
            Some(v) if v > until => delta_log::deltas_between(&entries, until, v),
            _ => None,
        };
    }
    let exact = after.is_some();
    let mut out = Vec::with_capacity(parsed.len());
    for chunk in parsed.chunks(CELLS_PER_COMMAND) {
        let fields: Vec<Option<String>> = if n_fields > 0 {
            replies
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let sketches: Vec<Option<Vec<u8>>> = if distinct.is_empty() || sketches_added.is_some() {
            Vec::new()
        } else {
            replies
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default()
        };
        let mut f = fields.into_iter();
        let mut s = sketches.into_iter();
        for c in chunk {
            let aggs = view
                .measures
                .iter()
                .map(|m| {
                    if m.agg == AggKind::Quantiles {
                        let field = || SketchField::encode(c.bucket_ms, &m.name, c.group);
                        if let Some(added) = quantiles_added.as_mut() {
                            return Agg::Quantiles(added.remove(&field()).unwrap_or_default());
                        }
                        let hash: HashMap<String, String> = replies
                            .next()
                            .and_then(|v| redis::from_redis_value(v).ok())
                            .unwrap_or_default();
                        let mut sketch = QuantileSketch::new();
                        for (b, n) in hash {
                            match (Bucket::parse(&b), n.trim().parse::<u64>()) {
                                (Some(b), Ok(n)) => sketch.add_count(b, n),
                                _ => skipped += 1,
                            }
                        }
                        if let Some(later) = after
                            .as_mut()
                            .filter(|a| !a.is_empty())
                            .and_then(|a| a.remove(&field()))
                        {
                            sketch.subtract(&later);
                        }
                        return Agg::Quantiles(sketch);
                    }
                    if m.agg == AggKind::Distinct {
                        if let Some(added) = sketches_added.as_mut() {
                            let field = SketchField::encode(c.bucket_ms, &m.name, c.group);
                            return Agg::Distinct(added.remove(&field).unwrap_or_default());
                        }
                        return match s.next().flatten() {
                            None => Agg::empty(m.agg),
                            Some(bytes) => Hll::from_redis_bytes(&bytes)
                                .map(Agg::Distinct)
                                .unwrap_or_else(|_| {
                                    skipped += 1;
                                    Agg::empty(m.agg)
                                }),
                        };
                    }
                    let values: Vec<Option<String>> =
                        parts(m.agg).iter().map(|_| f.next().flatten()).collect();
                    decode(m.agg, &values).unwrap_or_else(|| {
                        skipped += 1;
                        Agg::empty(m.agg)
                    })
                })
                .collect();
            out.push(CellValue {
                bucket: c.bucket_ms,
                group: c.group.to_owned(),
                aggs,
            });
        }
    }
    Ok((out, skipped, exact))
}

/// The aggregate of one measure from its fields (absent: identity part).
fn decode(kind: AggKind, values: &[Option<String>]) -> Option<Agg> {
    let int = |i: usize| -> Option<i64> {
        values[i]
            .as_deref()
            .map_or(Some(0), |v| v.trim().parse().ok())
    };
    let float = |i: usize| -> Option<Option<f64>> {
        match values[i].as_deref() {
            None => Some(None),
            Some(v) => v.trim().parse().ok().map(Some),
        }
    };
    Some(match kind {
        AggKind::Count => Agg::Count(int(0)?.max(0) as u64),
        AggKind::Sum => Agg::Sum {
            int: i128::from(int(0)?) + i128::from(int(1)?) * SUM_CARRY_UNIT,
            float: float(2)?.unwrap_or(0.0),
        },
        AggKind::Min => Agg::Min(float(0)?),
        AggKind::Max => Agg::Max(float(0)?),
        AggKind::Distinct | AggKind::Quantiles => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_decode_with_the_carry_and_absent_parts() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(decode(AggKind::Count, &[s("7")]), Some(Agg::Count(7)));
        assert_eq!(decode(AggKind::Count, &[None]), Some(Agg::Count(0)));
        assert_eq!(
            decode(AggKind::Sum, &[s("-5"), s("2"), s("0.5")]),
            Some(Agg::Sum {
                int: 2 * SUM_CARRY_UNIT - 5,
                float: 0.5
            })
        );
        assert_eq!(decode(AggKind::Min, &[None]), Some(Agg::Min(None)));
        assert_eq!(decode(AggKind::Max, &[s("3.5")]), Some(Agg::Max(Some(3.5))));
        assert_eq!(decode(AggKind::Count, &[s("x")]), None);
    }

    /// A log entry: the previous version, then one sketch's delta.
    fn entry(prev: u64, field: &str, values: &[f64]) -> Vec<u8> {
        let mut delta = QuantileSketch::new();
        values.iter().for_each(|&v| delta.add(v));
        let mut body = format!("{prev}\n");
        delta_log::write_line(&mut body, field, &delta);
        body.into_bytes()
    }

    #[test]
    fn a_log_read_past_the_slice_version_counts_only_up_to_it() {
        // The head reads the log past the copy's version to the end, so a
        // flush applied between the slice versions and the log is there too.
        const F: &str = r#"60000|latency|["/a"]"#;
        const U: &str = r#"60000|users|["/a"]"#;
        const C: &str = r#"60000|n|c|["/a"]"#;
        let changes = Changes {
            cells: Vec::new(),
            log: Some(vec![
                (entry(2, F, &[1.0]), 3),
                (entry(3, F, &[5.0]), 4),
                (entry(4, F, &[900.0]), 5),
            ]),
            sketch_log: Some(vec![
                (format!("2\n{U}\t105\n").into_bytes(), 3),
                (b"3\n".to_vec(), 4),
                (format!("4\n{U}\t10a\n").into_bytes(), 5),
            ]),
            counter_log: Some(vec![
                (format!("2\n1\n{C}\n").into_bytes(), 3),
                (b"3\n".to_vec(), 4),
                (format!("4\n3\n{C}\n").into_bytes(), 5),
            ]),
        };
        let mut want = QuantileSketch::new();
        [1.0, 5.0].iter().for_each(|&v| want.add(v));
        let added = changes.quantiles_added(2, 4).expect("a chain from 2 to 4");
        assert_eq!(added[F], want);
        // A gap still reads whole; no log asked reads whole.
        assert!(changes.quantiles_added(1, 4).is_none());
        assert!(Changes::default().quantiles_added(2, 4).is_none());
        // The same for the sketch log: version 5's change is left for the
        // next sync.
        let added = changes.sketches_added(2, 4).expect("a chain from 2 to 4");
        assert_eq!(added[U].entries(), vec![0x105]);
        assert!(changes.sketches_added(1, 4).is_none());
        assert!(Changes::default().sketches_added(2, 4).is_none());
        // Counters are values: the later flush's is as good, and newer.
        let counters = changes.counters_through(2, 4).expect("a chain through 4");
        assert_eq!(counters[C], "3");
        assert!(changes.counters_through(1, 4).is_none());
        assert!(Changes::default().counters_through(2, 4).is_none());
    }
}
