//! `dedup = "event_id"`: a view's rows of one day cut down to one per
//! event_id, the first copy by (Kafka timestamp, topic, partition, offset).
//!
//! Producers that retry write one event at two offsets, maybe in two
//! partitions. A dedup view counts each event_id once per event-time UTC
//! day; the plan runs per day, so within one day's plan the key is the
//! event_id alone. Which copy wins matters only when the copies differ
//! (a retry that carries other properties): the first in the order above,
//! the rule the truth and the docs state. The rows given are already
//! de-duplicated on (topic, partition, offset) and filtered to what the view
//! accepts, so a copy outside the view never hides one inside it.
//!
//! Exact over incremental runs: a recomputed day reads every archive file
//! touching it (`super::engine`), so a retry and its first copy are seen
//! together whichever run archived each. A sort and a stable `unique` (both
//! streaming operators, no per-group closure).

use polars::prelude::*;

/// The columns the rule reads, beside the coordinates every plan reads.
pub(super) const COLUMNS: [&str; 2] = ["event_id", "kafka_ts_ms"];

/// `rows` with one row per event_id: the first by (Kafka timestamp, topic,
/// partition, offset).
pub(super) fn first_copies(rows: LazyFrame) -> LazyFrame {
    let order = ["kafka_ts_ms", "topic", "partition", "offset"].map(col);
    rows.sort_by_exprs(order, SortMultipleOptions::default())
        .unique_stable_generic(Some(vec![col("event_id")]), UniqueKeepStrategy::First)
}
