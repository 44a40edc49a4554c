//! Counter deltas, folded in memory between flushes.
//!
//! One [`Unflushed`] collects the aggregates of every assigned partition since the
//! last flush; the consume loop tracks, per partition, the offset range
//! `[start, end)` it covers (every record in it was folded in here or
//! rejected). At each flush the delta is cut into a [`Chunk`]: the aggregates
//! plus one [`Range`] per partition that moved. One chunk is one apply-script
//! call per partition group (one, on a single Redis), fenced on every range
//! of the group at once, so a key that several partitions touch is written
//! once per flush and group, not once per partition.
//!
//! Aggregates are keyed by *slice* (partition group, view, ingest epoch,
//! event-time day: the group's records only, so a chunk splits by group), then
//! bucket, then group, exactly as the Redis layout in `tally_core::keys`
//! stores them. Distinct values are kept as they are while a group has few of
//! them ([`Distinct::Values`]), so that Redis can `PFADD` them: that costs
//! O(values) and keeps small keys sparse, where merging a sketch costs a pass
//! over all 16,384 registers.

use std::collections::{HashMap, HashSet};

use tally_core::agg::{Agg, AggKind};
use tally_core::event::Event;
use tally_core::hll::Hll;
use tally_core::time::{day_of, Epoch, EpochGrid};
use tally_core::view::{FieldPath, Input, ScalarRef, ViewDef};

use crate::dedup::{Keyer, Place, Window};

/// The maps of the hot path (see Cargo.toml for why foldhash).
pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The sets of the hot path.
pub type Set<K> = HashSet<K, foldhash::fast::RandomState>;

/// Past this many distinct values a group's distinct delta becomes a sketch.
/// `PFMERGE` of a sketch into a dense key costs Redis about 150 µs (passes
/// over all 16,384 registers); `PFADD` about 0.5 µs per value with its
/// argument: values are cheaper up to about 300 of them.
pub(crate) const DISTINCT_VALUES_MAX: usize = 256;

/// One view, prepared for the hot path.
#[derive(Debug)]
pub(crate) struct PreparedView {
    pub def: ViewDef,
    filter: Vec<(FieldPath, Vec<String>)>,
}

impl PreparedView {
    pub(crate) fn new(def: ViewDef) -> Self {
        let filter = def.parsed_filter();
        PreparedView { def, filter }
    }
}

/// Identifies a slice: view index, ingest epoch, event-time day, and the
/// partition group whose records it holds (`tally_core::keys::Layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SliceId {
    pub group: u32,
    pub view: usize,
    pub epoch: Epoch,
    pub day: i64,
}

/// Aggregates of one slice: bucket start -> group JSON -> one delta per measure.
pub(crate) type SliceDelta = Map<i64, Map<String, Vec<MeasureDelta>>>;

/// One measure's delta for one bucket and group.
#[derive(Debug, Clone, PartialEq)]
pub enum MeasureDelta {
    /// `count`, `sum`, `min`, `max`: the shared monoid.
    Agg(Agg),
    /// `distinct`.
    Distinct(Distinct),
}

/// The distinct values of one group since the last flush.
#[derive(Debug, Clone, PartialEq)]
pub enum Distinct {
    /// At most [`DISTINCT_VALUES_MAX`] values, each once: sent for `PFADD`.
    Values(Set<Box<[u8]>>),
    /// More than that: sent as a sketch for `PFMERGE`.
    Sketch(Hll),
}

impl Distinct {
    /// Add one value (its text, the bytes `PFADD` would hash).
    pub fn add(&mut self, value: &[u8]) {
        match self {
            Distinct::Values(vs) => {
                if vs.contains(value) {
                    return;
                }
                if vs.len() < DISTINCT_VALUES_MAX {
                    vs.insert(value.into());
                    return;
                }
                let mut h = Hll::new();
                for v in vs.iter() {
                    h.add(v);
                }
                h.add(value);
                *self = Distinct::Sketch(h);
            }
            Distinct::Sketch(h) => h.add(value),
        }
    }
}

impl Distinct {
    /// The sketch of these values (tests compare it with a sketch built
    /// directly; the flusher sends the values themselves).
    #[cfg(test)]
    fn to_hll(&self) -> Hll {
        match self {
            Distinct::Values(vs) => {
                let mut h = Hll::new();
                for v in vs {
                    h.add(v);
                }
                h
            }
            Distinct::Sketch(h) => h.clone(),
        }
    }
}

impl MeasureDelta {
    fn empty(kind: AggKind) -> Self {
        match kind {
            AggKind::Distinct => MeasureDelta::Distinct(Distinct::Values(Set::default())),
            k => MeasureDelta::Agg(Agg::empty(k)),
        }
    }
}

/// The aggregates folded since the last flush, over every partition.
#[derive(Debug, Default)]
pub struct Unflushed {
    pub slices: Map<SliceId, SliceDelta>,
    /// Valid events folded in.
    pub events: u64,
    /// (slice, bucket, group) cells held: what the delta's memory grows with.
    pub cells: usize,
    /// Copies left out of dedup views (one per view that left one out).
    pub duplicates: u64,
}

/// The offsets of one partition that a chunk covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub topic: String,
    pub partition: i32,
    /// First offset covered.
    pub start: i64,
    /// One past the last offset covered.
    pub end: i64,
    /// Whether `start` is a rebuild point (no stored offset in Redis).
    pub fresh: bool,
}

/// A flushed delta: what one apply-script call writes, all or nothing.
#[derive(Debug)]
pub struct Chunk {
    /// The consume loop's generation when it was cut; answers about chunks of
    /// an older generation (cut before a re-seek) are ignored.
    pub generation: u64,
    pub ranges: Vec<Range>,
    pub slices: Vec<(SliceId, SliceDelta)>,
    pub events: u64,
}

impl Unflushed {
    /// Take the aggregates, leaving the delta empty.
    pub fn take(&mut self) -> (Vec<(SliceId, SliceDelta)>, u64) {
        self.cells = 0;
        (
            self.slices.drain().collect(),
            std::mem::take(&mut self.events),
        )
    }

    /// Drop everything folded so far (the records will be read again).
    pub fn clear(&mut self) {
        self.slices.clear();
        self.events = 0;
        self.cells = 0;
        self.duplicates = 0;
    }
}

/// Where a record was read: its coordinates and Kafka time.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub kafka_ts_ms: i64,
}

/// How many records the consume loop decodes ahead of folding them
/// ([`Folder::look_ahead`], then [`Folder::fold_ahead`]): enough for the
/// dedup window's memory reads to overlap, few enough that their slots are
/// still in cache when folded.
pub const LOOK_AHEAD: usize = 16;

/// An event's dedup window key and place, from [`Folder::look_ahead`]
/// (empty when no view dedups).
#[derive(Debug, Clone, Copy)]
pub struct Ahead(Option<(u128, Place)>);

/// Folds events into deltas. Holds scratch buffers so the hot path does not
/// allocate for groups and buckets it has already seen.
#[derive(Debug)]
pub struct Folder {
    views: Vec<PreparedView>,
    grid: EpochGrid,
    group: String,
    text: String,
    /// Per view, `Some(bit)` when it has `dedup = "event_id"` (`None`
    /// inside for a dedup view past the 16th: no bit, counts every copy).
    dedup_bits: Vec<Option<Option<u16>>>,
    /// The window of counted event_ids, when a view dedups ([`crate::dedup`]).
    window: Option<Window>,
    keyer: Keyer,
    /// Topics seen, so a window's coordinates hold an index.
    topics: Vec<String>,
}

/// `speed.dedup_window`'s default, for folders built without a config.
const DEDUP_WINDOW: usize = 1_000_000;

impl Folder {
    pub fn new(views: Vec<ViewDef>, grid: EpochGrid) -> Self {
        let mut n = 0u32;
        let dedup_bits: Vec<Option<Option<u16>>> = views
            .iter()
            .map(|v| {
                v.dedups().then(|| {
                    n += 1;
                    (n <= 16).then(|| 1u16 << (n - 1))
                })
            })
            .collect();
        let window = (n > 0).then(|| Window::new(DEDUP_WINDOW));
        Folder {
            views: views.into_iter().map(PreparedView::new).collect(),
            grid,
            group: String::with_capacity(64),
            text: String::with_capacity(64),
            dedup_bits,
            window,
            keyer: Keyer::new(),
            topics: Vec::new(),
        }
    }

    /// Each dedup view remembers at most `n` event_ids (`speed.dedup_window`).
    pub fn with_dedup_window(mut self, n: usize) -> Self {
        if self.window.is_some() {
            self.window = Some(Window::new(n));
        }
        self
    }

    pub fn views(&self) -> impl Iterator<Item = &ViewDef> {
        self.views.iter().map(|v| &v.def)
    }

    pub fn view(&self, index: usize) -> &ViewDef {
        &self.views[index].def
    }

    /// The dedup window key of `event` read at `at`, with the window's
    /// slots for it already requested from memory. The window is larger than
    /// the caches, so a probe is a memory round trip: looking a few events
    /// ahead of [`Folder::fold_ahead`] lets those round trips overlap instead
    /// of stalling the fold one event at a time.
    pub fn look_ahead(&mut self, at: &At<'_>, event: &Event<'_>) -> Ahead {
        let Some(window) = self.window.as_ref() else {
            return Ahead(None);
        };
        let topic = match self.topics.iter().position(|t| t == at.topic) {
            Some(i) => i,
            None => {
                self.topics.push(at.topic.to_owned());
                self.topics.len() - 1
            }
        };
        let place = Place {
            topic: topic as u16,
            partition: at.partition,
            offset: at.offset,
        };
        let key = self.keyer.key(&event.event_id, day_of(event.time_ms));
        window.prefetch(key);
        Ahead(Some((key, place)))
    }

    /// Fold one valid event read at `at` into `delta`, among the slices of
    /// partition group `group` (that of the record's partition). A view
    /// with `dedup = "event_id"` leaves out a copy of an event it counted
    /// (within its window).
    pub fn fold(&mut self, delta: &mut Unflushed, group: u32, at: At<'_>, event: &Event<'_>) {
        let ahead = self.look_ahead(&at, event);
        self.fold_ahead(delta, group, at, event, ahead);
    }

    /// [`Folder::fold`], with the window key `look_ahead` gave for this
    /// very record.
    pub fn fold_ahead(
        &mut self,
        delta: &mut Unflushed,
        group: u32,
        at: At<'_>,
        event: &Event<'_>,
        ahead: Ahead,
    ) {
        let epoch = self.grid.epoch_of(at.kafka_ts_ms);
        let day = day_of(event.time_ms);
        delta.events += 1;
        for (vi, view) in self.views.iter().enumerate() {
            if !view
                .def
                .accepts_with(at.topic, event, &view.filter, &mut self.text)
            {
                continue;
            }
            if let (Some(bit), Some(window), Some((key, place))) =
                (self.dedup_bits[vi], self.window.as_mut(), ahead.0)
            {
                if !window.count(key, place, bit) {
                    delta.duplicates += 1;
                    continue;
                }
            }
            let bucket = view.def.granularity.bucket(event.time_ms);
            write_group(&mut self.group, &mut self.text, &view.def, event);
            let buckets = delta
                .slices
                .entry(SliceId {
                    group,
                    view: vi,
                    epoch,
                    day,
                })
                .or_default()
                .entry(bucket)
                .or_default();
            let cells = match buckets.get_mut(self.group.as_str()) {
                Some(a) => a,
                None => {
                    delta.cells += 1;
                    buckets.entry(self.group.clone()).or_insert_with(|| {
                        view.def
                            .measures
                            .iter()
                            .map(|m| MeasureDelta::empty(m.agg))
                            .collect()
                    })
                }
            };
            for (m, cell) in view.def.measures.iter().zip(cells.iter_mut()) {
                let Some(input) = m.input(event) else {
                    continue;
                };
                match (input, cell) {
                    (Input::One, MeasureDelta::Agg(Agg::Count(c))) => *c += 1,
                    (Input::Num(n), MeasureDelta::Agg(agg)) => agg.add_num(n),
                    (Input::Key(k), MeasureDelta::Distinct(d)) => {
                        self.text.clear();
                        k.write_text(&mut self.text);
                        d.add(self.text.as_bytes());
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Write the group of `event` as the JSON array `tally_core::keys::group_json`
/// would produce, without allocating per value (`text` is scratch).
fn write_group(out: &mut String, text: &mut String, view: &ViewDef, event: &Event<'_>) {
    out.clear();
    out.push('[');
    for (i, d) in view.dimensions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match d.get(event) {
            None => out.push_str("null"),
            Some(ScalarRef::Str(s)) => push_json_string(out, s),
            Some(v) => {
                text.clear();
                v.write_text(text);
                push_json_string(out, text);
            }
        }
    }
    out.push(']');
}

/// JSON string escaping, as serde_json writes it.
fn push_json_string(out: &mut String, s: &str) {
    use std::fmt::Write;
    // Nearly every value needs no escaping: copy it in one go.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::event::{decode, Limits};
    use tally_core::keys::group_json;

    #[test]
    fn group_text_equals_the_shared_encoding() {
        let view: ViewDef = serde_json::from_value(serde_json::json!({
            "name": "v", "granularity": "1m",
            "dimensions": ["properties.page", "properties.n", "user_id", "properties.missing"],
            "measures": [{"name": "c", "agg": "count"}]
        }))
        .unwrap();
        let rec = br#"{"event_id":"e","event_type":"t","timestamp":1704067200000,"user_id":"u\"\u0001\u00e9","properties":{"page":"/a\\b\n","n":1.5}}"#;
        let e = decode(rec, 1_704_067_200_000, &Limits::default()).unwrap();
        let (mut out, mut text) = (String::new(), String::new());
        write_group(&mut out, &mut text, &view, &e);
        assert_eq!(out, group_json(&view.group_of(&e)));
    }

    #[test]
    fn distinct_values_turn_into_a_sketch_past_the_limit() {
        let mut d = Distinct::Values(Set::default());
        let mut truth = Hll::new();
        for i in 0..DISTINCT_VALUES_MAX {
            let v = format!("u{i}");
            d.add(v.as_bytes());
            d.add(v.as_bytes()); // repeats are kept once
            truth.add(v.as_bytes());
        }
        assert!(matches!(&d, Distinct::Values(v) if v.len() == DISTINCT_VALUES_MAX));
        assert_eq!(d.to_hll(), truth);
        d.add(b"one more");
        truth.add(b"one more");
        assert!(matches!(&d, Distinct::Sketch(_)));
        assert_eq!(d.to_hll(), truth);
    }

    #[test]
    fn a_batch_looked_up_ahead_folds_as_one_at_a_time() {
        let view: ViewDef = serde_json::from_value(serde_json::json!({
            "name": "v", "granularity": "1m", "dedup": "event_id",
            "dimensions": ["properties.page"],
            "measures": [{"name": "c", "agg": "count"}]
        }))
        .unwrap();
        // e1, e2, a retry of e1, e3, a retry of e2, e1's record read again.
        let records: Vec<(Vec<u8>, i64)> = [("e1", 0), ("e2", 1), ("e1", 2), ("e3", 3), ("e2", 4), ("e1", 0)]
            .iter()
            .map(|(id, offset)| {
                let json = format!(
                    r#"{{"event_id":"{id}","event_type":"t","timestamp":1704067200000,"properties":{{"page":"/{id}"}}}}"#
                );
                (json.into_bytes(), *offset)
            })
            .collect();
        let at = |offset| At {
            topic: "events",
            partition: 0,
            offset,
            kafka_ts_ms: 1_704_067_200_000,
        };
        let limits = Limits::default();
        let events: Vec<_> = records
            .iter()
            .map(|(json, _)| decode(json, 1_704_067_200_000, &limits).unwrap())
            .collect();

        let mut one = Folder::new(vec![view.clone()], EpochGrid::new(3_600_000));
        let mut by_one = Unflushed::default();
        for (e, (_, offset)) in events.iter().zip(&records) {
            one.fold(&mut by_one, 0, at(*offset), e);
        }
        // Every key looked up before the first fold, as a batch is.
        let mut ahead = Folder::new(vec![view], EpochGrid::new(3_600_000));
        let keys: Vec<Ahead> = events
            .iter()
            .zip(&records)
            .map(|(e, (_, offset))| ahead.look_ahead(&at(*offset), e))
            .collect();
        let mut by_batch = Unflushed::default();
        for ((e, (_, offset)), key) in events.iter().zip(&records).zip(keys) {
            ahead.fold_ahead(&mut by_batch, 0, at(*offset), e, key);
        }

        assert_eq!(by_one.duplicates, 2, "the two retries are left out");
        assert_eq!(by_batch.duplicates, 2, "also when looked up together");
        let (mut a, mut b) = (by_one.take().0, by_batch.take().0);
        a.sort_by_key(|(id, _)| *id);
        b.sort_by_key(|(id, _)| *id);
        assert_eq!(a, b);
    }
}
