//! The snapshot format: what the writer writes the reader reads back, and
//! files of older versions and other encoders still read.

use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, Decimal128Builder, Float64Builder, StringBuilder};
use arrow_array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use tally_core::agg::Agg;
use tally_core::hll::Hll;
use tally_core::quantile::QuantileSketch;
use tally_core::view::ViewDef;

use super::*;

fn view() -> ViewDef {
    serde_json::from_value(serde_json::json!({
        "name": "v", "granularity": "1m", "dimensions": ["properties.page"],
        "measures": [
            {"name": "n", "agg": "count"},
            {"name": "s", "agg": "sum", "field": "properties.d"},
            {"name": "lo", "agg": "min", "field": "properties.d"},
            {"name": "hi", "agg": "max", "field": "properties.d"},
            {"name": "u", "agg": "distinct", "field": "user_id"},
            {"name": "lat", "agg": "quantiles", "field": "properties.d"}
        ]
    }))
    .unwrap()
}

fn quantiles_of(xs: &[f64]) -> Agg {
    let mut q = QuantileSketch::new();
    xs.iter().for_each(|&x| q.add(x));
    Agg::Quantiles(q)
}

fn sketch_of(users: std::ops::Range<u32>) -> Hll {
    let mut h = Hll::new();
    for u in users {
        h.add(format!("u{u}").as_bytes());
    }
    h
}

/// Rows with values at the edges: an integer sum beyond 64 bits, a group
/// without a page, a min without input, a dense sketch.
fn rows() -> Vec<Row> {
    vec![
        (
            0,
            vec![Some("/a".into())],
            vec![
                Agg::Count(3),
                Agg::Sum {
                    int: i128::from(i64::MAX) * 4,
                    float: 0.5,
                },
                Agg::Min(Some(-2.0)),
                Agg::Max(Some(7.0)),
                Agg::Distinct(sketch_of(0..3)),
                quantiles_of(&[-2.0, 0.0, 7.0, 7.0, 1e300]),
            ],
        ),
        (
            60_000,
            vec![None],
            vec![
                Agg::Count(1),
                Agg::Sum {
                    int: -5,
                    float: 0.0,
                },
                Agg::Min(None),
                Agg::Max(None),
                Agg::Distinct(sketch_of(0..5_000)),
                quantiles_of(&[]),
            ],
        ),
    ]
}

/// `rows` as the writer takes them, built here column by column.
fn day_batch(rows: &[Row]) -> DayBatch {
    let (mut page, mut int, mut float, mut lo, mut hi, mut u) = (
        StringBuilder::new(),
        Decimal128Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
        BinaryBuilder::new(),
    );
    let mut counts = Vec::new();
    let mut lat: Vec<(Vec<i32>, Vec<u64>)> = Vec::new();
    for (_, group, aggs) in rows {
        page.append_option(group[0].as_deref());
        let [Agg::Count(n), Agg::Sum { int: i, float: f }, Agg::Min(a), Agg::Max(b), Agg::Distinct(h), Agg::Quantiles(q)] =
            &aggs[..]
        else {
            panic!("row shape")
        };
        lat.push(q.by_code().unzip());
        counts.push(*n);
        int.append_value(*i);
        float.append_value(*f);
        lo.append_option(*a);
        hi.append_option(*b);
        u.append_value(h.to_redis_bytes());
    }
    DayBatch {
        bucket: Int64Array::from_iter_values(rows.iter().map(|r| r.0)),
        dimensions: vec![page.finish()],
        measures: vec![
            MeasureArray::Count(UInt64Array::from(counts)),
            MeasureArray::Sum {
                int: int.finish().with_data_type(SUM_INT_TYPE),
                float: float.finish(),
            },
            MeasureArray::Extreme(lo.finish()),
            MeasureArray::Extreme(hi.finish()),
            MeasureArray::Distinct(u.finish()),
            MeasureArray::Quantiles(quantile_array(
                lat.iter().map(|(b, n)| (b.as_slice(), n.as_slice())),
            )),
        ],
    }
}

/// Rows compared with sketches as their estimates (an `Hll` keeps its
/// encoding, which a round trip through Redis bytes may change).
fn comparable(rows: Vec<Row>) -> Vec<(i64, Vec<Option<String>>, Vec<String>)> {
    rows.into_iter()
        .map(|(b, g, aggs)| {
            let aggs = aggs
                .into_iter()
                .map(|a| match a {
                    Agg::Distinct(h) => format!("distinct {}", h.count()),
                    other => format!("{other:?}"),
                })
                .collect();
            (b, g, aggs)
        })
        .collect()
}

async fn put(store: &InMemory, path: &str, batch: &RecordBatch) {
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    store
        .put(&Path::from(path), PutPayload::from(buf))
        .await
        .unwrap();
}

#[tokio::test]
async fn what_the_writer_writes_the_reader_reads() {
    let store = Arc::new(InMemory::new());
    let view = view();
    let bytes = encode(&view, day_batch(&rows()), "f.parquet").unwrap();
    let size = super::put(store.clone(), "f.parquet", &bytes)
        .await
        .unwrap();
    let meta = store.head(&Path::from("f.parquet")).await.unwrap();
    assert_eq!(meta.size, size);
    let file = crate::manifest::DayFile {
        day: 0,
        level_ms: Some(60_000),
        path: "f.parquet".into(),
        rows: 2,
        bytes: Some(size),
    };
    check_footer(store.clone(), &file).await.unwrap();
    let back = read_rows(store.as_ref(), "f.parquet", &view).await.unwrap();
    assert_eq!(comparable(back), comparable(rows()));
}

#[test]
fn the_writer_refuses_columns_of_another_view() {
    let mut batch = day_batch(&rows());
    batch.measures.swap(0, 1);
    let err = encode(&view(), batch, "f.parquet").unwrap_err();
    assert!(matches!(err, SnapshotError::Schema { .. }), "{err}");
}

#[tokio::test]
async fn an_old_file_with_int64_sums_and_missing_columns_still_reads() {
    // As written before exact i128 sums, with a signed count, and without
    // the dimension, the float part and the extremes (read as absent).
    let store = InMemory::new();
    let cols: Vec<(&str, ArrayRef)> = vec![
        (
            "bucket_ms",
            Arc::new(Int64Array::from(vec![Some(0), None, Some(60_000)])),
        ),
        ("m:n", Arc::new(Int64Array::from(vec![2, 9, 1]))),
        ("m:s:int", Arc::new(Int64Array::from(vec![i64::MIN, 0, 4]))),
        (
            "m:u",
            Arc::new(arrow_array::BinaryArray::from(vec![
                sketch_of(0..2).to_redis_bytes().as_slice(),
                b"never read".as_slice(),
                sketch_of(0..1).to_redis_bytes().as_slice(),
            ])),
        ),
    ];
    put(
        &store,
        "old.parquet",
        &RecordBatch::try_from_iter(cols).unwrap(),
    )
    .await;
    let back = read_rows(&store, "old.parquet", &view()).await.unwrap();
    // The row without a bucket is dropped.
    let want: Vec<Row> = vec![
        (
            0,
            vec![None],
            vec![
                Agg::Count(2),
                Agg::Sum {
                    int: i64::MIN.into(),
                    float: 0.0,
                },
                Agg::Min(None),
                Agg::Max(None),
                Agg::Distinct(sketch_of(0..2)),
                quantiles_of(&[]),
            ],
        ),
        (
            60_000,
            vec![None],
            vec![
                Agg::Count(1),
                Agg::Sum { int: 4, float: 0.0 },
                Agg::Min(None),
                Agg::Max(None),
                Agg::Distinct(sketch_of(0..1)),
                quantiles_of(&[]),
            ],
        ),
    ];
    assert_eq!(comparable(back), comparable(want));
}

#[tokio::test]
async fn a_mistyped_column_or_a_bad_sketch_is_an_error_naming_it() {
    let store = InMemory::new();
    let page: ArrayRef = Arc::new(StringArray::from(vec!["/a"]));
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("bucket_ms", Arc::new(Int64Array::from(vec![0]))),
        ("d:properties.page", page.clone()),
        ("m:n", Arc::new(StringArray::from(vec!["three"]))),
    ];
    put(
        &store,
        "bad.parquet",
        &RecordBatch::try_from_iter(cols).unwrap(),
    )
    .await;
    let err = read_rows(&store, "bad.parquet", &view()).await.unwrap_err();
    assert!(
        matches!(&err, SnapshotError::Column { column, .. } if column == "m:n"),
        "{err}"
    );
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("bucket_ms", Arc::new(Int32Array::from(vec![0]))),
        (
            "m:u",
            Arc::new(arrow_array::BinaryArray::from(vec![b"nope".as_slice()])),
        ),
    ];
    put(
        &store,
        "bad2.parquet",
        &RecordBatch::try_from_iter(cols).unwrap(),
    )
    .await;
    let err = read_rows(&store, "bad2.parquet", &view())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SnapshotError::Column { column, .. } if column == "m:u"),
        "{err}"
    );
    // A bucket code out of the sketch's range.
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("bucket_ms", Arc::new(Int64Array::from(vec![0]))),
        (
            "m:lat",
            Arc::new(quantile_array([(
                [1_000_000].as_slice(),
                [1u64].as_slice(),
            )])),
        ),
    ];
    put(
        &store,
        "bad3.parquet",
        &RecordBatch::try_from_iter(cols).unwrap(),
    )
    .await;
    let err = read_rows(&store, "bad3.parquet", &view())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SnapshotError::Column { column, .. } if column == "m:lat"),
        "{err}"
    );
    let cols: Vec<(&str, ArrayRef)> = vec![("d:properties.page", page)];
    put(
        &store,
        "nobucket.parquet",
        &RecordBatch::try_from_iter(cols).unwrap(),
    )
    .await;
    let err = read_rows(&store, "nobucket.parquet", &view())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SnapshotError::Column { column, .. } if column == "bucket_ms"),
        "{err}"
    );
}
