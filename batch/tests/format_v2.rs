//! Archive format v2: promoted property columns against the `props` list
//! they come from, keys of conflicting types, more keys than the cap, and a
//! view over a key no file promoted (read from `props`) against the truth,
//! and a day of files that promote different keys against the truth.

mod common;

use std::sync::Arc;

use arrow_array::{Array, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch};
use arrow_array::{StringArray, StructArray};
use common::*;
use object_store::ObjectStore;
use tally_batch::archive_file::{self, ArchiveRows};
use tally_batch::promote::{Promote, PropType, MAX_COLUMNS};
use tally_batch::{run_batch, RunOptions};
use tally_core::config::Config;
use tally_core::event::Limits;
use tally_core::time::EpochGrid;
use tally_store::paths;
use tally_testkit::config::TestConfig;
use tally_testkit::gen::Generated;

/// A value as the tests compare them.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// Row `r`'s value of `key` by the `props` list: the first entry of the
/// key, `None` when absent or null.
fn from_props(props: &ListArray, r: usize, key: &str) -> Option<V> {
    let row = props.value(r);
    let s = row.as_any().downcast_ref::<StructArray>().unwrap();
    let keys = s.column(0).as_any().downcast_ref::<StringArray>().unwrap();
    let j = (0..s.len()).find(|&j| keys.value(j) == key)?;
    let str_ = s.column(1).as_any().downcast_ref::<StringArray>().unwrap();
    let int = s.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
    let flt = s.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
    let bol = s.column(4).as_any().downcast_ref::<BooleanArray>().unwrap();
    if str_.is_valid(j) {
        Some(V::Str(str_.value(j).to_owned()))
    } else if int.is_valid(j) {
        Some(V::Int(int.value(j)))
    } else if flt.is_valid(j) {
        Some(V::Float(flt.value(j)))
    } else if bol.is_valid(j) {
        Some(V::Bool(bol.value(j)))
    } else {
        None
    }
}

fn value_at(b: &RecordBatch, column: &str, ty: PropType, r: usize) -> Option<V> {
    let c = b
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column}"));
    if c.is_null(r) {
        return None;
    }
    Some(match ty {
        PropType::Str => V::Str(
            c.as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(r)
                .to_owned(),
        ),
        PropType::Int => V::Int(c.as_any().downcast_ref::<Int64Array>().unwrap().value(r)),
        PropType::Float => V::Float(c.as_any().downcast_ref::<Float64Array>().unwrap().value(r)),
        PropType::Bool => V::Bool(c.as_any().downcast_ref::<BooleanArray>().unwrap().value(r)),
    })
}

fn type_of(v: &V) -> PropType {
    match v {
        V::Str(_) => PropType::Str,
        V::Int(_) => PropType::Int,
        V::Float(_) => PropType::Float,
        V::Bool(_) => PropType::Bool,
    }
}

/// Records with generated traffic, a key of four types (`mixed`),
/// duplicated keys (the first counts), null values, and `n_keys` extra keys
/// in every record (`x000`, ...).
fn records(n: usize, n_keys: usize) -> Vec<Generated> {
    let mut gen = tally_testkit::gen::Generator::new(shape(), 9).unwrap();
    (0..n)
        .map(|i| {
            let ts = T0 + i as i64 * 1_000;
            if i % 3 == 0 {
                let mixed = match i % 4 {
                    0 => "\"s\"".to_owned(),
                    1 => format!("{i}"),
                    2 => format!("{i}.5"),
                    _ => "true".to_owned(),
                };
                let extra: String = (0..n_keys).map(|k| format!(",\"x{k:03}\":{k}")).collect();
                let payload = format!(
                    r#"{{"event_id":"e{i}","event_type":"page_view","timestamp":{ts},"user_id":"u{i}","properties":{{"page":"/d","mixed":{mixed},"page":"/second","gone":null{extra}}}}}"#
                )
                .into_bytes();
                Generated {
                    key: Vec::new(),
                    payload,
                    kafka_ts_ms: ts,
                    valid: true,
                    kind: None,
                }
            } else {
                gen.next(ts)
            }
        })
        .collect()
}

async fn written(records: &[Generated], promote: &Promote) -> Vec<RecordBatch> {
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let clock = EpochGrid::new(HOUR);
    let mut rows = ArchiveRows::new(0);
    for (o, r) in records.iter().enumerate() {
        rows.push(
            "events",
            0,
            o as i64,
            r.kafka_ts_ms,
            clock,
            &Limits::default(),
            &r.payload,
        );
    }
    let path = paths::archive_file(T0 / HOUR, "events", 0, 0);
    archive_file::write(store.clone(), &path, &mut rows, promote)
        .await
        .unwrap();
    archive_file::read_all(store, &path).await.unwrap()
}

/// Every promoted column holds, row by row, the first value of its key in
/// `props`, in the column of that value's type; the footer lists them.
#[tokio::test]
async fn promoted_columns_agree_with_props_for_every_row() {
    let cfg = config("memory://");
    let recs = records(6_000, 3);
    let batches = written(&recs, &Promote::of(&cfg)).await;
    let schema = batches[0].schema();
    let promoted: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| n.starts_with("properties."))
        .collect();
    for expect in [
        "properties.page",
        "properties.duration",
        "properties.scroll",
        "properties.country",
        "properties.amount",
        "properties.mixed:str",
        "properties.mixed:int",
        "properties.mixed:float",
        "properties.mixed:bool",
        "properties.x000",
    ] {
        assert!(
            promoted.iter().any(|p| p == expect),
            "{expect} in {promoted:?}"
        );
    }
    assert!(
        !promoted.iter().any(|p| p.contains("gone")),
        "a key that is always null"
    );
    let mut checked = 0;
    for b in &batches {
        let props = b
            .column_by_name("props")
            .unwrap()
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap();
        for name in &promoted {
            let (key, ty) = match name.strip_prefix("properties.").unwrap().rsplit_once(':') {
                Some((k, t)) => (k, Some(t)),
                None => (name.strip_prefix("properties.").unwrap(), None),
            };
            for r in 0..b.num_rows() {
                let want = from_props(props, r, key);
                let col_ty = match ty {
                    Some(t) => PropType::ALL.into_iter().find(|x| x.name() == t).unwrap(),
                    None => schema_type(b, name),
                };
                let got = value_at(b, name, col_ty, r);
                let expected = want.filter(|v| type_of(v) == col_ty);
                assert_eq!(got, expected, "row {r}, {name}");
                checked += 1;
            }
        }
    }
    assert!(checked > 60_000);
    // The first of two `page` entries counts.
    let b = &batches[0];
    assert_eq!(
        value_at(b, "properties.page", PropType::Str, 0),
        Some(V::Str("/d".into()))
    );
}

fn schema_type(b: &RecordBatch, name: &str) -> PropType {
    match b.schema().field_with_name(name).unwrap().data_type() {
        arrow_schema::DataType::Utf8 => PropType::Str,
        arrow_schema::DataType::Int64 => PropType::Int,
        arrow_schema::DataType::Float64 => PropType::Float,
        arrow_schema::DataType::Boolean => PropType::Bool,
        other => panic!("{name}: {other}"),
    }
}

/// With 200 frequent keys, the views' keys and the most frequent others up
/// to the cap are columns; the rest only in `props`. A view over a key no
/// file promoted, and over the mixed key, still equals the truth (read from
/// `props`), in a store where that view's key was never promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_keys_than_the_cap_and_views_over_unpromoted_keys() {
    let cfg = config("memory://");
    let recs = records(3_000, 200);
    let batches = written(&recs, &Promote::of(&cfg)).await;
    let names: Vec<String> = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| n.starts_with("properties."))
        .collect();
    let views_own = 5; // page, duration, scroll, country, amount
    assert_eq!(names.len(), MAX_COLUMNS.max(views_own), "{names:?}");
    assert!(!names.iter().any(|n| n == "properties.x199"));

    // A view on x199 (never a column) and on `mixed` (four types).
    let views = r#"
[[view]]
name = "by_x"
dimensions = ["properties.x199", "properties.mixed"]
granularity = "1h"
measures = [
  { name = "n", agg = "count" },
  { name = "xs", agg = "sum", field = "properties.x150" },
  { name = "mixed", agg = "distinct", field = "properties.mixed" },
  { name = "top", agg = "max", field = "properties.mixed" },
]
[[view]]
name = "filtered"
filter = { "properties.mixed" = ["s", "true", "4"], event_type = ["page_view"] }
granularity = "1h"
measures = [{ name = "n", agg = "count" }]
"#;
    let cfg2: Config = TestConfig::new()
        .views(views)
        .extra("[batch]\ngc_grace = \"0ms\"")
        .build();
    let store = tally_store::open(&cfg2.store).unwrap();
    let gens: Vec<Gen> = recs
        .into_iter()
        .enumerate()
        .map(|(o, g)| Gen {
            partition: 0,
            offset: o as i64,
            g,
        })
        .collect();
    // Files written knowing the standard views only.
    write_archive(&store, "events", &gens).await;
    set_cut(&store, T0 / HOUR + 2).await;
    run_batch(&cfg2, store.clone(), RunOptions::default())
        .await
        .unwrap();
    let truth = truth(&cfg2, &gens, T0 / HOUR + 2);
    for v in ["by_x", "filtered"] {
        let snap = snapshot_at(&store, &cfg2, v, None).await;
        let t = truth.view(v);
        assert_eq!(
            snap.keys().collect::<Vec<_>>(),
            t.cells.map.keys().collect::<Vec<_>>(),
            "{v}"
        );
        assert!(!t.cells.is_empty(), "{v}");
        compare(v, &t.measures, &t.cells, &snap);
    }
    // Every type of `mixed` and both values of x199 make groups.
    let by_x = truth.view("by_x");
    assert!(
        by_x.cells.len() >= 5,
        "{:?}",
        by_x.cells.map.keys().collect::<Vec<_>>()
    );
}

/// Files of one day that promote different keys, as files do: each chooses
/// its frequent keys itself. `campaign` is a number in a third of partition
/// 0's events and a text in a third of partition 1's (a column in their
/// files, of another type in each), and in a few of partition 2's (in
/// `props` only); and a rewrite of part of partition 1 in format v1
/// overlaps its v2 files. A view that does not read `campaign` scans the
/// three partitions' files together: Polars by default rejects a file with
/// a column the first file lacks ("extra column in file outside of expected
/// schema", which `tests/dedup.rs` once met), so the scan ignores columns
/// outside the plan. Every standard view, and one grouped by `campaign`,
/// equal the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_promoting_different_keys_recompute_to_the_truth() {
    let views = format!(
        r#"{}
[[view]]
name = "by_campaign"
dimensions = ["properties.campaign"]
granularity = "1h"
measures = [
  {{ name = "n", agg = "count" }},
  {{ name = "users", agg = "distinct", field = "user_id" }},
]
"#,
        tally_testkit::config::STANDARD_VIEWS
    );
    let cfg: Config = TestConfig::new()
        .views(&views)
        .extra("[batch]\ngc_grace = \"0ms\"")
        .build();
    let store = tally_store::open(&cfg.store).unwrap();
    let mut offsets = Vec::new();
    let mut events = generate(71, 9_000, 3, &mut offsets, T0, 2 * HOUR);
    // Offsets in Kafka-time order, as in a partition's log: each file a run
    // of consecutive offsets that overlaps no other, so that the files of
    // different partitions are scanned together.
    events.sort_by_key(|e| (e.partition, e.g.kafka_ts_ms));
    let mut next = [0; 3];
    for e in &mut events {
        e.offset = next[e.partition as usize];
        next[e.partition as usize] += 1;
    }
    for (i, e) in events.iter_mut().enumerate() {
        let campaign: serde_json::Value = match e.partition {
            0 if i % 3 == 0 => (i % 4).into(),
            1 if i % 3 == 0 => format!("c{}", i % 4).into(),
            2 if i % 25 == 0 => format!("c{}", i % 4).into(),
            _ => continue,
        };
        with_campaign(e, campaign);
    }
    // Written knowing the standard views only: `campaign` is promoted where
    // it is frequent.
    let files = write_archive(&store, "events", &events).await;
    let rewrite: Vec<Gen> = events
        .iter()
        .filter(|e| e.partition == 1 && (100..400).contains(&e.offset))
        .cloned()
        .collect();
    write_archive_with(&store, "events", &rewrite, &Promote::legacy_v1()).await;

    // The store really holds those schemas.
    let mut promoting: [Option<arrow_schema::DataType>; 3] = Default::default();
    for f in &files {
        let batches = archive_file::read_all(store.clone(), f).await.unwrap();
        let p = batches[0]
            .column_by_name("partition")
            .and_then(|c| c.as_any().downcast_ref::<arrow_array::Int32Array>())
            .map(|c| c.value(0))
            .unwrap();
        if let Some(c) = batches[0].column_by_name("properties.campaign") {
            promoting[p as usize] = Some(c.data_type().clone());
        }
    }
    use arrow_schema::DataType::{Int64, Utf8};
    assert_eq!(
        promoting,
        [Some(Int64), Some(Utf8), None],
        "campaign's column per partition"
    );

    let cut = T0 / HOUR + 2;
    set_cut(&store, cut).await;
    run_batch(&cfg, store.clone(), RunOptions::default())
        .await
        .unwrap();
    check_all(&store, &cfg, &events, cut).await;
    check(&store, &cfg, "by_campaign", &events, cut).await;
    let truth = truth(&cfg, &events, cut);
    let campaigns = truth.view("by_campaign").cells.len();
    assert!(campaigns >= 5, "campaigns and none, per hour: {campaigns}");
}

/// `e` with `campaign` among its properties (when it is a valid event with
/// properties).
fn with_campaign(e: &mut Gen, campaign: serde_json::Value) {
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&e.g.payload) else {
        return;
    };
    let Some(props) = json.get_mut("properties").and_then(|p| p.as_object_mut()) else {
        return;
    };
    props.insert("campaign".into(), campaign);
    e.g.payload = serde_json::to_vec(&json).unwrap();
}
