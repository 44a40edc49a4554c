//! Per-partition counter deltas, folded in memory between flushes.
//!
//! A [`PartitionDelta`] covers a contiguous offset range `[start, end)` of one
//! partition: every record in it was either folded in here or rejected. At each
//! flush it is cut into a [`Chunk`] (the unit the apply script fences on) and
//! starts again at `end`. Deltas are keyed by *slice* (view, ingest epoch,
//! event-time day), then bucket, then group, exactly as the Redis layout in
//! `tally_core::keys` stores them.

use std::collections::HashMap;

use tally_core::agg::Agg;
use tally_core::event::Event;
use tally_core::time::{day_of, Epoch, EpochClock};
use tally_core::view::{FieldPath, Input, ScalarRef, ViewDef};

/// One view, prepared for the hot path.
#[derive(Debug)]
pub struct PreparedView {
    pub def: ViewDef,
    filter: Vec<(FieldPath, Vec<String>)>,
}

impl PreparedView {
    pub fn new(def: ViewDef) -> Self {
        let filter = def.parsed_filter();
        PreparedView { def, filter }
    }
}

/// Identifies a slice: view index, ingest epoch, event-time day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SliceId {
    pub view: usize,
    pub epoch: Epoch,
    pub day: i64,
}

/// Aggregates of one slice: bucket start -> group JSON -> one [`Agg`] per measure.
pub type SliceDelta = HashMap<i64, HashMap<String, Vec<Agg>>>;

/// Deltas of one partition since the last flush.
#[derive(Debug)]
pub struct PartitionDelta {
    /// First offset covered.
    pub start: i64,
    /// One past the last offset covered.
    pub end: i64,
    /// Whether `start` is a rebuild point (no stored offset in Redis).
    pub fresh: bool,
    /// Bumped at every re-seek; feedback for older generations is stale.
    pub generation: u64,
    pub slices: HashMap<SliceId, SliceDelta>,
    pub events: u64,
}

/// A flushed delta: what one apply-script call writes.
#[derive(Debug)]
pub struct Chunk {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
    pub fresh: bool,
    pub generation: u64,
    pub slices: Vec<(SliceId, SliceDelta)>,
    pub events: u64,
}

impl PartitionDelta {
    pub fn new(start: i64, fresh: bool, generation: u64) -> Self {
        PartitionDelta {
            start,
            end: start,
            fresh,
            generation,
            slices: HashMap::new(),
            events: 0,
        }
    }

    /// Whether the delta covers any offset.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Take the delta as a chunk; the delta continues from its end.
    pub fn cut(&mut self, topic: &str, partition: i32) -> Chunk {
        let chunk = Chunk {
            topic: topic.to_owned(),
            partition,
            start: self.start,
            end: self.end,
            fresh: self.fresh,
            generation: self.generation,
            slices: self.slices.drain().collect(),
            events: std::mem::take(&mut self.events),
        };
        self.start = self.end;
        self.fresh = false;
        chunk
    }
}

/// Folds events into deltas. Holds scratch buffers so the hot path does not
/// allocate for groups and buckets it has already seen.
#[derive(Debug)]
pub struct Folder {
    views: Vec<PreparedView>,
    clock: EpochClock,
    group: String,
    text: String,
}

impl Folder {
    pub fn new(views: Vec<ViewDef>, clock: EpochClock) -> Self {
        Folder {
            views: views.into_iter().map(PreparedView::new).collect(),
            clock,
            group: String::with_capacity(64),
            text: String::with_capacity(64),
        }
    }

    pub fn views(&self) -> impl Iterator<Item = &ViewDef> {
        self.views.iter().map(|v| &v.def)
    }

    pub fn view(&self, index: usize) -> &ViewDef {
        &self.views[index].def
    }

    /// Fold one valid event from `topic`, stamped `kafka_ts_ms`, into `delta`.
    pub fn fold(
        &mut self,
        delta: &mut PartitionDelta,
        topic: &str,
        kafka_ts_ms: i64,
        event: &Event<'_>,
    ) {
        let epoch = self.clock.epoch_of(kafka_ts_ms);
        let day = day_of(event.time_ms);
        delta.events += 1;
        for (vi, view) in self.views.iter().enumerate() {
            if !view
                .def
                .accepts_with(topic, event, &view.filter, &mut self.text)
            {
                continue;
            }
            let bucket = view.def.granularity.bucket(event.time_ms);
            write_group(&mut self.group, &mut self.text, &view.def, event);
            let buckets = delta
                .slices
                .entry(SliceId {
                    view: vi,
                    epoch,
                    day,
                })
                .or_default()
                .entry(bucket)
                .or_default();
            let aggs = match buckets.get_mut(self.group.as_str()) {
                Some(a) => a,
                None => buckets.entry(self.group.clone()).or_insert_with(|| {
                    view.def
                        .measures
                        .iter()
                        .map(|m| Agg::empty(m.agg))
                        .collect()
                }),
            };
            for (m, agg) in view.def.measures.iter().zip(aggs.iter_mut()) {
                match m.input(event) {
                    None => {}
                    Some(Input::One) => {
                        if let Agg::Count(c) = agg {
                            *c += 1;
                        }
                    }
                    Some(Input::Num(n)) => agg.add_num(n),
                    Some(Input::Key(k)) => {
                        self.text.clear();
                        k.write_text(&mut self.text);
                        agg.add_key(self.text.as_bytes());
                    }
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
    fn chunks_are_contiguous() {
        let mut d = PartitionDelta::new(100, true, 1);
        d.end = 150;
        let c1 = d.cut("t", 0);
        assert_eq!((c1.start, c1.end, c1.fresh), (100, 150, true));
        d.end = 151;
        let c2 = d.cut("t", 0);
        assert_eq!((c2.start, c2.end, c2.fresh), (150, 151, false));
        assert!(d.is_empty());
    }
}
