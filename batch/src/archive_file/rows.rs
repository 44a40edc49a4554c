//! One archive file's records being assembled: each record decoded once on
//! the way in, into the columns of [`super::schema`], and the days its valid
//! events touch, for the footer.
//!
//! Guarantee: every record is kept, valid or not, with its raw bytes; a
//! record that does not decode gets its reject code and null envelope.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder,
    StringBuilder, StructBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use tally_core::event::{decode, Limits, Scalar};
use tally_core::time::{day_of, EpochGrid};

use super::{prop_fields, schema, FileError};
use crate::promote::{Promote, PromotedKey, PropType, PropsView};

/// Records of one archive file being assembled, decoded once on the way in.
#[derive(Debug)]
pub struct ArchiveRows {
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    kafka_ts: Int64Builder,
    epoch: Int64Builder,
    reject: StringBuilder,
    event_id: StringBuilder,
    event_type: StringBuilder,
    time_ms: Int64Builder,
    user_id: StringBuilder,
    props: ListBuilder<StructBuilder>,
    raw: BinaryBuilder,
    days: BTreeSet<i64>,
    rows: usize,
    /// First offset in this file (it names the file).
    pub first_offset: i64,
    /// Last offset added.
    pub(super) last_offset: i64,
}

impl ArchiveRows {
    pub fn new(first_offset: i64) -> Self {
        ArchiveRows {
            topic: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            kafka_ts: Int64Builder::new(),
            epoch: Int64Builder::new(),
            reject: StringBuilder::new(),
            event_id: StringBuilder::new(),
            event_type: StringBuilder::new(),
            time_ms: Int64Builder::new(),
            user_id: StringBuilder::new(),
            props: ListBuilder::new(StructBuilder::from_fields(prop_fields(), 0)),
            raw: BinaryBuilder::new(),
            days: BTreeSet::new(),
            rows: 0,
            first_offset,
            last_offset: first_offset,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Decode and add one record (valid or not).
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        kafka_ts_ms: i64,
        clock: EpochGrid,
        limits: &Limits,
        value: &[u8],
    ) {
        self.last_offset = self.last_offset.max(offset);
        self.topic.append_value(topic);
        self.partition.append_value(partition);
        self.offset.append_value(offset);
        self.kafka_ts.append_value(kafka_ts_ms);
        self.epoch.append_value(clock.epoch_of(kafka_ts_ms));
        self.raw.append_value(value);
        self.rows += 1;
        match decode(value, kafka_ts_ms, limits) {
            Ok(e) => {
                self.reject.append_null();
                self.event_id.append_value(&e.event_id);
                self.event_type.append_value(&e.event_type);
                self.time_ms.append_value(e.time_ms);
                self.days.insert(day_of(e.time_ms));
                self.user_id.append_option(e.user_id.as_deref());
                let s = self.props.values();
                for (k, v) in &e.properties {
                    field::<StringBuilder>(s, 0).append_value(k);
                    let (st, i, f, b) = match v {
                        Scalar::Str(x) => (Some(x.as_ref()), None, None, None),
                        Scalar::Int(x) => (None, Some(*x), None, None),
                        Scalar::Float(x) => (None, None, Some(*x), None),
                        Scalar::Bool(x) => (None, None, None, Some(*x)),
                        Scalar::Null => (None, None, None, None),
                    };
                    field::<StringBuilder>(s, 1).append_option(st);
                    field::<Int64Builder>(s, 2).append_option(i);
                    field::<Float64Builder>(s, 3).append_option(f);
                    field::<BooleanBuilder>(s, 4).append_option(b);
                    s.append(true);
                }
                self.props.append(true);
            }
            Err(r) => {
                self.reject.append_value(r.code());
                self.event_id.append_null();
                self.event_type.append_null();
                self.time_ms.append_null();
                self.user_id.append_null();
                self.props.append(true);
            }
        }
    }

    /// The UTC days of the valid records' event times.
    pub fn days(&self) -> &BTreeSet<i64> {
        &self.days
    }

    /// Finish into one record batch, with the keys `promote` picks as
    /// columns; returns the promoted keys too.
    pub fn finish(
        &mut self,
        promote: &Promote,
    ) -> Result<(RecordBatch, Vec<PromotedKey>), FileError> {
        let reject = self.reject.finish();
        let props = self.props.finish();
        let view = PropsView::of(&props)?;
        let (counts, valid) = view.counts(&reject);
        let promoted = promote.choose(&counts, valid);
        let columns: Vec<(PropType, String)> = promoted
            .iter()
            .flat_map(|k| k.columns.iter().cloned())
            .collect();
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.topic.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.kafka_ts.finish()),
            Arc::new(self.epoch.finish()),
            Arc::new(reject),
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.time_ms.finish()),
            Arc::new(self.user_id.finish()),
        ];
        cols.extend(view.columns(&promoted));
        cols.push(Arc::new(props));
        cols.push(Arc::new(self.raw.finish()));
        Ok((RecordBatch::try_new(schema(&columns), cols)?, promoted))
    }
}

fn field<T: arrow_array::builder::ArrayBuilder>(s: &mut StructBuilder, i: usize) -> &mut T {
    s.field_builder::<T>(i)
        .expect("struct field builder of the declared type")
}
