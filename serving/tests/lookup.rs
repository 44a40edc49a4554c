//! Lookups (`dimension@lookup`): answers grouped and filtered through a
//! table in the object store equal the fold of the events with the same
//! mapping applied by the test; a table rewritten mid-test is picked up at
//! the next poll, with its new version in the answer; bad lookups are 4xx.
//!
//! Tables: `properties.page@section` from a CSV file (one page left out: it
//! maps to the configured `missing`), `properties.country@region` from a
//! Parquet file.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, RecordBatch};
use common::*;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_core::config::LookupConfig;
use tally_serving::{router, AppState, ServeOptions};

const SECTION: &str = "properties.page@section";
const REGION: &str = "properties.country@region";

fn sections_v1() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        ("/home", "top"),
        ("/a", "news"),
        ("/b|x", "news"),
        ("/c:1", "shop"),
    ])
}

fn sections_v2() -> HashMap<&'static str, &'static str> {
    HashMap::from([("/home", "top"), ("/a", "shop"), ("/é", "intl")])
}

fn regions() -> HashMap<&'static str, &'static str> {
    HashMap::from([("de", "eu"), ("fr", "eu"), ("us", "na")])
}

fn csv(map: &HashMap<&str, &str>) -> String {
    let mut out = String::from("page,section,comment\n");
    for (k, v) in map {
        out += &format!("\"{}\",{v},\"a, b\"\n", k.replace('"', "\"\""));
    }
    out
}

fn parquet(map: &HashMap<&str, &str>) -> Vec<u8> {
    let (mut k, mut v) = (StringBuilder::new(), StringBuilder::new());
    for (a, b) in map {
        k.append_value(a);
        v.append_value(b);
    }
    let batch = RecordBatch::try_from_iter([
        ("country", Arc::new(k.finish()) as ArrayRef),
        ("region", Arc::new(v.finish()) as ArrayRef),
    ])
    .expect("batch");
    let mut buf = Vec::new();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    buf
}

async fn put(store: &InMemory, path: &str, bytes: Vec<u8>) {
    store
        .put(&Path::from(path), PutPayload::from(bytes))
        .await
        .expect("put");
}

/// The events with page and country mapped as the tables say (a page
/// absent from the table maps to `other`; an absent value stays absent).
fn mapped(evs: &[Ev], sections: &HashMap<&str, &str>) -> Vec<Ev> {
    let regions = regions();
    evs.iter()
        .map(|e| Ev {
            page: e
                .page
                .as_deref()
                .map(|p| sections.get(p).copied().unwrap_or("other").to_owned()),
            country: e
                .country
                .as_deref()
                .map(|c| regions.get(c).copied().unwrap_or("?").to_owned()),
            ..e.clone()
        })
        .collect()
}

/// `q`'s URL with both dimensions looked up, and the answer with the
/// looked-up columns named as the dimensions (for [`compare`]).
async fn ask(app: &axum::Router, q: &Q) -> (serde_json::Value, String) {
    let url = q
        .url()
        .replace("properties.page", "properties.page%40section")
        .replace("properties.country", "properties.country%40region");
    let (status, body) = get(app, &url).await;
    assert_eq!(status, 200, "{url} -> {body}");
    let text = body
        .to_string()
        .replace(SECTION, DIMS[0])
        .replace(REGION, DIMS[1]);
    (serde_json::from_str(&text).expect("json"), url)
}

fn random_lookup_query(rng: &mut StdRng, sections: &HashMap<&str, &str>) -> Q {
    let mut q = random_query(rng);
    let mut values: Vec<&str> = sections.values().copied().collect();
    values.extend(["other", "nothing-maps-here"]);
    q.filters = (0..rng.gen_range(0..3))
        .map(|_| {
            if rng.gen_bool(0.5) {
                (0, values[rng.gen_range(0..values.len())].to_owned())
            } else {
                (1, ["eu", "na"][rng.gen_range(0..2)].to_owned())
            }
        })
        .collect();
    q
}

#[tokio::test]
async fn lookups_group_and_filter_as_the_mapped_fold_and_follow_a_swapped_table() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let view = view();
    let evs = events(31, 4000);
    let store = Arc::new(InMemory::new());
    publish_snapshot(&store, &view, &evs, T0 / EPOCH_MS + 30, "run1").await;
    write_speed(&redis.url(), "t", &view, &evs).await;
    put(
        &store,
        "lookups/sections.csv",
        csv(&sections_v1()).into_bytes(),
    )
    .await;
    put(&store, "lookups/regions.parquet", parquet(&regions())).await;
    let mut cfg = config(&redis.url(), "t");
    cfg.lookups = vec![
        LookupConfig {
            name: "section".into(),
            path: "lookups/sections.csv".into(),
            key: "page".into(),
            value: "section".into(),
            missing: Some("other".into()),
        },
        LookupConfig {
            name: "region".into(),
            path: "lookups/regions.parquet".into(),
            key: "country".into(),
            value: "region".into(),
            missing: None,
        },
    ];
    let state = AppState::new(cfg, store.clone(), ServeOptions::default()).expect("state");
    assert_eq!(state.refresh().await, 1);
    let app = router(state.clone());

    let mut rng = StdRng::seed_from_u64(8);
    let truth_v1 = mapped(&evs, &sections_v1());
    let mut version_v1 = None;
    for _ in 0..40 {
        let q = random_lookup_query(&mut rng, &sections_v1());
        let (body, url) = ask(&app, &q).await;
        compare(&body, &q, &truth_v1);
        let v = body["lookups"][SECTION.split('@').nth(1).unwrap_or_default()].clone();
        if q.group_by.contains(&0) || q.filters.iter().any(|f| f.0 == 0) {
            assert!(v.is_string(), "{url}: {body}");
            version_v1.get_or_insert(v.clone());
            assert_eq!(Some(&v), version_v1.as_ref());
        }
    }
    // The answer names the columns as asked.
    let (status, body) = get(
        &app,
        &format!(
            "/api/v1/views/pv/query?from={T0}&to={}&granularity=1d&group_by=properties.page%40section,properties.country",
            T0 + SPAN_MS
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["group_by"], serde_json::json!([SECTION, DIMS[1]]));

    // A new version of the table: picked up at the next poll, no restart.
    put(
        &store,
        "lookups/sections.csv",
        csv(&sections_v2()).into_bytes(),
    )
    .await;
    assert_eq!(state.refresh().await, 0, "no view changed");
    let truth_v2 = mapped(&evs, &sections_v2());
    let q = Q {
        from: T0,
        to: T0 + SPAN_MS,
        gran: tally_core::time::Granularity::HOUR,
        group_by: vec![0, 1],
        filters: vec![],
        measures: MEASURES.to_vec(),
    };
    let (body, _) = ask(&app, &q).await;
    compare(&body, &q, &truth_v2);
    let v2 = body["lookups"]["section"].clone();
    assert!(v2.is_string() && Some(&v2) != version_v1.as_ref(), "{v2}");
    let (_, status) = get(&app, "/api/v1/status").await;
    let tables = status["lookups"].as_array().expect("lookups").clone();
    assert_eq!(tables[0]["version"], v2);
    assert_eq!(tables[0]["keys"], 3);
    assert_eq!(tables[1]["keys"], 3);

    // A broken rewrite keeps the last good version serving and says why.
    put(
        &store,
        "lookups/sections.csv",
        b"page,section\n/a,x\n/a,y\n".to_vec(),
    )
    .await;
    state.refresh().await;
    let (body, _) = ask(&app, &q).await;
    compare(&body, &q, &truth_v2);
    assert_eq!(body["lookups"]["section"], v2);
    let (_, status) = get(&app, "/api/v1/status").await;
    let err = status["lookups"][0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("`/a`") && err.contains("twice"), "{status}");
}

#[tokio::test]
async fn unknown_lookups_are_400_and_a_missing_table_is_degraded() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let evs = events(4, 500);
    write_speed(&redis.url(), "t", &view(), &evs).await;
    let mut cfg = config(&redis.url(), "t");
    cfg.lookups = vec![LookupConfig {
        name: "section".into(),
        path: "lookups/absent.csv".into(),
        key: "page".into(),
        value: "section".into(),
        missing: Some("unmapped".into()),
    }];
    let state =
        AppState::new(cfg, Arc::new(InMemory::new()), ServeOptions::default()).expect("state");
    state.refresh().await;
    let app = router(state);
    let base = format!("/api/v1/views/pv/query?from={T0}&to={}", T0 + SPAN_MS);
    for (q, code) in [
        ("&group_by=properties.page%40region", "unknown_lookup"),
        ("&filter=properties.page%40region%3Ax", "unknown_lookup"),
        ("&group_by=properties.nope%40section", "unknown_dimension"),
    ] {
        let (status, body) = get(&app, &format!("{base}{q}")).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert_eq!(body["code"], code, "{q}: {body}");
    }
    // The table was never read: every page maps to `missing`.
    let (status, body) = get(
        &app,
        &format!("{base}&granularity=1d&group_by=properties.page%40section&measures=views"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["degraded"], serde_json::json!(["lookup"]));
    assert_eq!(body["lookups"]["section"], serde_json::Value::Null);
    let with_page = evs.iter().filter(|e| e.page.is_some()).count() as u64;
    let series = body["series"].as_array().expect("series");
    let unmapped = series
        .iter()
        .find(|s| s["group"][SECTION] == "unmapped")
        .expect("unmapped group");
    assert_eq!(unmapped["totals"]["views"].as_u64(), Some(with_page));
    assert_eq!(series.len(), 2, "unmapped and absent pages: {body}");
}
