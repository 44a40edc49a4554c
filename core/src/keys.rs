//! Every Redis key and hash field Tally uses, in one place.
//!
//! The speed layer writes these and the serving layer reads them; neither builds
//! a key by hand. Layout, with `P` the prefix of one *partition group*
//! ([`Layout`]: `tally` for a single Redis with one group, as before groups
//! existed; otherwise `tally:{g}`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:off` | hash | `topic/partition` → next offset to apply (the fence) |
//! | `P:seen` | hash | `topic/partition` → `1` once an offset of it was stored: an offset missing from `P:off` while this says it was stored means Redis lost it, not a fresh start |
//! | `P:c:{view}:{epoch}:{day}` | hash | counter fields, see [`CounterField`] |
//! | `P:h:{view}:{epoch}:{day}:{bucket}\|{measure}\|{group}` | HLL | a distinct sketch |
//! | `P:q:{view}:{epoch}:{day}:{bucket}\|{measure}\|{group}` | hash | a quantile sketch: [`crate::quantile::Bucket::encode`] (`+i`, `-i`, `0`) → count (HINCRBY) |
//! | `P:ql:{view}:{epoch}:{day}` | sorted set | what each flush added to the slice's quantile sketches, scored by its version, the last few kept ([`crate::quantile::delta_log`]) |
//! | `P:sl:{view}:{epoch}:{day}` | sorted set | which distinct sketches each flush changed, scored by its version, the last few kept ([`crate::hll::sketch_log`]) |
//! | `P:cl:{view}:{epoch}:{day}` | sorted set | the new value of each counter field each flush wrote, scored by its version, the last few kept ([`crate::counter_log`]) |
//! | `P:v:{view}:{epoch}:{day}` | sorted set | the slice's cells `{bucket}\|{group}` ([`CellMember`]), scored by the version of the last flush that touched them |
//! | `P:s:{view}` | sorted set | `{epoch}:{day}` slices present, scored by expiry (ms) |
//! | `P:sv:{view}` | hash | `{epoch}:{day}` → the version of the last flush that touched the slice |
//! | `P:defs` | hash | view name → the fingerprint of the definition its slices were computed with ([`crate::view::ViewDef::fingerprint`]) |
//! | `P:ver` | hash | `v` → the version of the last applied flush (one per apply-script call), `born` → when `v` was created (ms) |
//!
//! The serving role's threshold alerts keep their own keys ([`AlertKeys`],
//! from [`Layout::alerts`]), under `A` = `{prefix}:alerts`, or
//! `{prefix}:{alerts}` (one hash tag, so one slot) when keys are tagged:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `A:lease` | string, expiring | the token of the serving process that evaluates the rules and sends their notifications |
//! | `A:state` | hash | rule name → its state as JSON (fingerprint of the rule, phase, since when, episode, last value) |
//! | `A:out` | stream | the notifications not yet delivered, oldest first (field `n`: the notification as JSON) |
//!
//! The speed layer never writes them, and its rebuild after a changed view
//! definition leaves them in place ([`AlertKeys::owns`]).
//!
//! A *slice* is one view's counters for one ingest epoch and one event-time day:
//! the unit the merge rule selects (`epoch >= cut`) and the unit that expires.
//! Groups are JSON arrays (`["/home",null]`), unambiguous whatever the values hold.
//!
//! The versions let a reader keep a copy of the slices up to date without
//! re-reading them: every flush takes the next version, and marks every slice
//! and every (bucket, group) cell it wrote with it. A reader that has seen
//! version `v` of a slice re-reads only the cells scored above `v`
//! (`ZRANGEBYSCORE`); a `born` it has not seen means Redis lost its data and
//! the copy starts over. A cell's sketches are found from the cell and the
//! view's distinct and quantile measures ([`SketchField`]).
//!
//! ## Partition groups
//!
//! Kafka partition `p` (of any topic) belongs to group `p mod G`
//! (`redis.partition_groups`). Every key of group `g` starts with
//! `{prefix}:{g}`: the braces are a Redis Cluster hash tag, so all of a
//! group's keys, offsets included, hash to one slot and one apply-script call
//! can read and write them together. Each group is a complete copy of the
//! layout above (its own offsets, version, `born`, slices and definitions)
//! holding the counters of its partitions only; a reader merges the groups'
//! slices (every aggregate is a monoid). The tag is per group rather than
//! per view or slice because the fence (a partition's offset) and every
//! counter that partition's records touch must be written in one call; it is
//! per group rather than per partition so that a flush costs one call per
//! group, not one per partition. A single Redis with `G = 1` keeps untagged
//! keys: data written before groups existed reads on.

use crate::time::Epoch;

/// Key builder for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// What a counter field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `count`: an integer (HINCRBY).
    Count,
    /// `sum`, integer part (HINCRBY); with [`Part::SumCarry`] it holds
    /// the exact sum `int + carry * 2^62`.
    SumInt,
    /// `sum`, the carry of the integer part, in units of [`SUM_CARRY_UNIT`]
    /// (the apply script moves 2^62 here before `int` would overflow).
    SumCarry,
    /// `sum`, float part (HINCRBYFLOAT).
    SumFloat,
    /// `min` (compare-and-set in Lua).
    Min,
    /// `max` (compare-and-set in Lua).
    Max,
}

impl Part {
    pub fn tag(self) -> char {
        match self {
            Part::Count => 'c',
            Part::SumInt => 'i',
            Part::SumCarry => 'j',
            Part::SumFloat => 'f',
            Part::Min => 'n',
            Part::Max => 'x',
        }
    }

    pub fn from_tag(c: &str) -> Option<Part> {
        Some(match c {
            "c" => Part::Count,
            "i" => Part::SumInt,
            "j" => Part::SumCarry,
            "f" => Part::SumFloat,
            "n" => Part::Min,
            "x" => Part::Max,
            _ => return None,
        })
    }
}

/// The unit of [`Part::SumCarry`]: 2^62.
pub const SUM_CARRY_UNIT: i128 = 1 << 62;

/// An exact integer sum as the apply script adds it: `(lo, hi)` with
/// `sum = lo + hi * 2^62` and `|lo| < 2^62`, each part an `i64` for `HINCRBY`.
pub fn split_sum(sum: i128) -> (i64, i64) {
    // Truncating division: `lo` keeps the sign of `sum`, so `|lo| < 2^62`.
    let hi = sum / SUM_CARRY_UNIT;
    let lo = sum % SUM_CARRY_UNIT;
    (lo as i64, hi.clamp(i64::MIN.into(), i64::MAX.into()) as i64)
}

/// The field of [`Keys::version`] holding the last applied flush's version.
pub const VERSION_FIELD: &str = "v";
/// The field of [`Keys::version`] holding when the counter was created (ms).
pub const BORN_FIELD: &str = "born";

/// A parsed counter field: `{bucket_ms}|{measure}|{part}|{group_json}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterField<'a> {
    pub bucket_ms: i64,
    pub measure: &'a str,
    pub part: Part,
    pub group: &'a str,
}

impl<'a> CounterField<'a> {
    pub fn encode(bucket_ms: i64, measure: &str, part: Part, group_json: &str) -> String {
        format!("{bucket_ms}|{measure}|{}|{group_json}", part.tag())
    }

    pub fn parse(field: &'a str) -> Option<CounterField<'a>> {
        let mut it = field.splitn(4, '|');
        let bucket_ms = it.next()?.parse().ok()?;
        let measure = it.next()?;
        let part = Part::from_tag(it.next()?)?;
        let group = it.next()?;
        Some(CounterField {
            bucket_ms,
            measure,
            part,
            group,
        })
    }
}

/// A parsed sketch suffix: `{bucket_ms}|{measure}|{group_json}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SketchField<'a> {
    pub bucket_ms: i64,
    pub measure: &'a str,
    pub group: &'a str,
}

impl<'a> SketchField<'a> {
    pub fn encode(bucket_ms: i64, measure: &str, group_json: &str) -> String {
        format!("{bucket_ms}|{measure}|{group_json}")
    }

    pub fn parse(field: &'a str) -> Option<SketchField<'a>> {
        let mut it = field.splitn(3, '|');
        Some(SketchField {
            bucket_ms: it.next()?.parse().ok()?,
            measure: it.next()?,
            group: it.next()?,
        })
    }
}

/// A member of a slice's cell set ([`Keys::cells`]): `{bucket_ms}|{group_json}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellMember<'a> {
    pub bucket_ms: i64,
    pub group: &'a str,
}

impl<'a> CellMember<'a> {
    pub fn encode(bucket_ms: i64, group_json: &str) -> String {
        format!("{bucket_ms}|{group_json}")
    }

    pub fn parse(member: &'a str) -> Option<CellMember<'a>> {
        let (bucket, group) = member.split_once('|')?;
        Some(CellMember {
            bucket_ms: bucket.parse().ok()?,
            group,
        })
    }
}

/// Encode a group (one value per dimension) as its JSON array text.
pub fn group_json(values: &[Option<String>]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".into())
}

/// Decode a group's JSON array text.
pub fn parse_group(text: &str) -> Option<Vec<Option<String>>> {
    serde_json::from_str(text).ok()
}

/// Where each partition group's keys live (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
    groups: u32,
    tagged: bool,
}

impl Layout {
    /// `groups` partition groups under `prefix` (at least one). Untagged keys
    /// (`tagged = false`) only make sense for one group on one Redis.
    pub fn new(prefix: &str, groups: u32, tagged: bool) -> Layout {
        let groups = groups.max(1);
        Layout {
            prefix: prefix.to_owned(),
            groups,
            tagged: tagged || groups > 1,
        }
    }

    /// One group, untagged: today's layout on a single Redis.
    pub fn single(prefix: &str) -> Layout {
        Layout::new(prefix, 1, false)
    }

    pub fn groups(&self) -> u32 {
        self.groups
    }

    /// The configured prefix (without any group tag).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The group of a Kafka partition: `partition mod groups`.
    pub fn group_of(&self, partition: i32) -> u32 {
        partition.rem_euclid(self.groups as i32) as u32
    }

    /// The keys of group `group`.
    pub fn keys(&self, group: u32) -> Keys {
        if self.tagged {
            Keys::new(&format!("{}:{{{group}}}", self.prefix))
        } else {
            Keys::new(&self.prefix)
        }
    }

    /// The keys of a partition's group.
    pub fn keys_of(&self, partition: i32) -> Keys {
        self.keys(self.group_of(partition))
    }

    /// Every group's keys, by group number.
    pub fn all(&self) -> Vec<Keys> {
        (0..self.groups).map(|g| self.keys(g)).collect()
    }

    /// The keys of the serving role's threshold alerts (see the module
    /// documentation): tagged like the groups' keys, with the tag `alerts`.
    pub fn alerts(&self) -> AlertKeys {
        let prefix = if self.tagged {
            format!("{}:{{alerts}}", self.prefix)
        } else {
            format!("{}:alerts", self.prefix)
        };
        AlertKeys { prefix }
    }

    /// The definition fingerprint the speed layer records for `view` in
    /// Redis (`P:defs`), and that serving expects there: the view's own
    /// fingerprint, plus the number of groups when keys are tagged. A
    /// changed `partition_groups` moves partitions between groups, so
    /// counters written under the old layout would be read beside counters
    /// rebuilt under the new one (counted twice); with the layout in the
    /// fingerprint it is a changed definition: rebuilt from the cut, and a
    /// writer or reader still on the old layout is refused or degraded.
    /// One untagged group keeps the plain fingerprint (existing data).
    pub fn fingerprint(&self, view: &crate::view::ViewDef) -> String {
        if self.tagged {
            format!("{}/groups={}", view.fingerprint(), self.groups)
        } else {
            view.fingerprint()
        }
    }
}

/// The threshold alerts' keys (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertKeys {
    prefix: String,
}

impl AlertKeys {
    /// Who evaluates and sends: a process's token, set with an expiry.
    pub fn lease(&self) -> String {
        format!("{}:lease", self.prefix)
    }

    /// Every rule's state, a hash by rule name.
    pub fn state(&self) -> String {
        format!("{}:state", self.prefix)
    }

    /// The notifications waiting for delivery, a stream.
    pub fn outbox(&self) -> String {
        format!("{}:out", self.prefix)
    }

    /// Whether `key` is one of these keys.
    pub fn owns(&self, key: &str) -> bool {
        key.strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with(':'))
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hash of fenced offsets.
    pub fn offsets(&self) -> String {
        format!("{}:off", self.prefix)
    }

    /// The partitions whose offset was ever stored (same fields as
    /// [`Keys::offsets`]), written by the same script call: the marker that
    /// tells a lost offset from a partition never applied.
    pub fn seen(&self) -> String {
        format!("{}:seen", self.prefix)
    }

    /// Each view's definition fingerprint, as the speed layer wrote it: a
    /// reader with another definition must not merge the view's slices.
    pub fn definitions(&self) -> String {
        format!("{}:defs", self.prefix)
    }

    /// The field of one partition in [`Keys::offsets`].
    pub fn offset_field(topic: &str, partition: i32) -> String {
        format!("{topic}/{partition}")
    }

    pub fn counters(&self, view: &str, epoch: Epoch, day: i64) -> String {
        format!("{}:c:{view}:{epoch}:{day}", self.prefix)
    }

    /// The prefix of every sketch key of a slice; append a [`SketchField`].
    pub fn sketch_prefix(&self, view: &str, epoch: Epoch, day: i64) -> String {
        format!("{}:h:{view}:{epoch}:{day}:", self.prefix)
    }

    /// The prefix of every quantile sketch key of a slice; append a
    /// [`SketchField`]. Each key is a hash of bucket → count.
    pub fn quantile_prefix(&self, view: &str, epoch: Epoch, day: i64) -> String {
        format!("{}:q:{view}:{epoch}:{day}:", self.prefix)
    }

    /// The slice's quantile delta log ([`crate::quantile::delta_log`]).
    pub fn quantile_log(&self, view: &str, epoch: Epoch, day: i64) -> String {
        format!("{}:ql:{view}:{epoch}:{day}", self.prefix)
    }

    /// The slice's sketch log ([`crate::hll::sketch_log`]).
    pub fn sketch_log(&self, view: &str, epoch: Epoch, day: i64) -> String {
        format!("{}:sl:{view}:{epoch}:{day}", self.prefix)
    }

    /// The slice's counter log ([`crate::counter_log`]).
    pub fn counter_log(&self, view: &str, epoch: Epoch, day: i64) -> String {
        format!("{}:cl:{view}:{epoch}:{day}", self.prefix)
    }

    /// The slice's cells, scored by version (see the module documentation).
    pub fn cells(&self, view: &str, epoch: Epoch, day: i64) -> String {
        format!("{}:v:{view}:{epoch}:{day}", self.prefix)
    }

    pub fn slices(&self, view: &str) -> String {
        format!("{}:s:{view}", self.prefix)
    }

    /// The version of each slice of `view`, by [`Keys::slice_member`].
    pub fn slice_versions(&self, view: &str) -> String {
        format!("{}:sv:{view}", self.prefix)
    }

    /// The flush version counter (fields [`VERSION_FIELD`] and [`BORN_FIELD`]).
    pub fn version(&self) -> String {
        format!("{}:ver", self.prefix)
    }

    /// A member of [`Keys::slices`].
    pub fn slice_member(epoch: Epoch, day: i64) -> String {
        format!("{epoch}:{day}")
    }

    pub fn parse_slice_member(m: &str) -> Option<(Epoch, i64)> {
        let (e, d) = m.split_once(':')?;
        Some((e.parse().ok()?, d.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_even_with_separators_in_groups() {
        let g = group_json(&[Some("a|b".into()), None]);
        let f = CounterField::encode(60_000, "views", Part::SumFloat, &g);
        let p = CounterField::parse(&f).unwrap();
        assert_eq!(p.bucket_ms, 60_000);
        assert_eq!(p.measure, "views");
        assert_eq!(p.part, Part::SumFloat);
        assert_eq!(
            parse_group(p.group).unwrap(),
            vec![Some("a|b".to_string()), None]
        );
        let s = SketchField::encode(-60_000, "users", &g);
        assert_eq!(SketchField::parse(&s).unwrap().group, g);
        assert_eq!(
            Keys::parse_slice_member(&Keys::slice_member(473_040, 19_710)),
            Some((473_040, 19_710))
        );
        let c = CellMember::encode(-60_000, &g);
        assert_eq!(
            CellMember::parse(&c),
            Some(CellMember {
                bucket_ms: -60_000,
                group: &g
            })
        );
    }

    #[test]
    fn sums_split_into_parts_that_fit_hincrby() {
        for sum in [
            0i128,
            1,
            -1,
            SUM_CARRY_UNIT - 1,
            SUM_CARRY_UNIT,
            -SUM_CARRY_UNIT - 5,
            12_000_000_000_000_000_001,
            3 * i128::from(i64::MIN),
        ] {
            let (lo, hi) = split_sum(sum);
            assert!(i128::from(lo).abs() < SUM_CARRY_UNIT, "{sum}");
            assert_eq!(i128::from(lo) + i128::from(hi) * SUM_CARRY_UNIT, sum);
        }
    }

    #[test]
    fn groups_tag_every_key_and_one_untagged_group_keeps_the_old_keys() {
        let one = Layout::single("t1");
        assert_eq!(one.keys(0), Keys::new("t1"));
        assert_eq!(one.keys_of(7), Keys::new("t1"));
        let l = Layout::new("t1", 4, false);
        assert_eq!(l.group_of(6), 2);
        assert_eq!(l.group_of(-1), 3);
        let k = l.keys_of(6);
        assert_eq!(k.offsets(), "t1:{2}:off");
        assert_eq!(k.counters("v", 5, 7), "t1:{2}:c:v:5:7");
        assert_eq!(k.sketch_prefix("v", 5, 7), "t1:{2}:h:v:5:7:");
        assert_eq!(k.quantile_prefix("v", 5, 7), "t1:{2}:q:v:5:7:");
        assert_eq!(l.all().len(), 4);
        assert_eq!(Layout::new("t1", 1, true).keys(0).version(), "t1:{0}:ver");
    }

    #[test]
    fn alert_keys_share_one_tag_when_keys_are_tagged() {
        let one = Layout::single("t1").alerts();
        assert_eq!(one.lease(), "t1:alerts:lease");
        assert_eq!(one.state(), "t1:alerts:state");
        assert_eq!(one.outbox(), "t1:alerts:out");
        let tagged = Layout::new("t1", 4, true).alerts();
        assert_eq!(tagged.state(), "t1:{alerts}:state");
        assert_eq!(tagged.outbox(), "t1:{alerts}:out");
        assert!(tagged.owns("t1:{alerts}:lease"));
        assert!(!tagged.owns("t1:{2}:off"));
        assert!(!one.owns("t1:alertsx:state"));
        assert!(!one.owns("t1:c:alerts:1:2"));
    }

    #[test]
    fn the_layout_is_part_of_a_tagged_fingerprint() {
        let view: crate::view::ViewDef = toml::from_str(
            r#"
            name = "pv"
            granularity = "1m"
            measures = [{ name = "views", agg = "count" }]
            "#,
        )
        .expect("valid view");
        let fp = view.fingerprint();
        assert_eq!(Layout::single("t").fingerprint(&view), fp);
        let four = Layout::new("t", 4, true).fingerprint(&view);
        let two = Layout::new("t", 2, true).fingerprint(&view);
        assert_ne!(four, fp);
        assert_ne!(four, two);
        assert_ne!(Layout::new("t", 1, true).fingerprint(&view), fp);
    }

    #[test]
    fn keys_carry_the_prefix() {
        let k = Keys::new("t1");
        assert_eq!(k.offsets(), "t1:off");
        assert_eq!(k.counters("v", 5, 7), "t1:c:v:5:7");
        assert_eq!(k.sketch_prefix("v", 5, 7), "t1:h:v:5:7:");
        assert_eq!(k.quantile_prefix("v", 5, 7), "t1:q:v:5:7:");
        assert_eq!(k.slices("v"), "t1:s:v");
        assert_eq!(k.cells("v", 5, 7), "t1:v:v:5:7");
        assert_eq!(k.slice_versions("v"), "t1:sv:v");
        assert_eq!(k.version(), "t1:ver");
    }
}
