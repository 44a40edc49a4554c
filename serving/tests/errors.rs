//! Bad requests are 4xx JSON `{code, message}`; down components degrade the
//! answer instead of failing it; status, metrics, OpenAPI and the page answer.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request};
use common::*;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use tally_core::time::Granularity;
use tally_serving::{
    router, AppState, RecomputeError, RecomputeHook, RecomputeRequest, ServeOptions,
};

/// A Redis URL nothing listens on.
fn dead_redis() -> String {
    let port = tally_testkit::free_port().expect("port");
    format!("redis://127.0.0.1:{port}")
}

fn app_with(cfg: tally_core::config::Config, store: Arc<InMemory>) -> axum::Router {
    let opts = ServeOptions {
        redis_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    router(AppState::new(cfg, store, opts).expect("state"))
}

#[tokio::test]
async fn bad_queries_are_4xx_json_with_a_code() {
    let app = app_with(config(&dead_redis(), "t"), Arc::new(InMemory::new()));
    let q = "/api/v1/views/pv/query";
    let cases: Vec<(String, u16, &str)> = vec![
        ("/api/v1/views/nope/query".into(), 404, "unknown_view"),
        (format!("{q}?granularity=7m"), 400, "bad_granularity"),
        (format!("{q}?granularity=30s"), 400, "bad_granularity"),
        (format!("{q}?granularity=banana"), 400, "bad_granularity"),
        (
            format!("{q}?from=2024-01-02T00:00:00Z&to=2024-01-01T00:00:00Z"),
            400,
            "bad_range",
        ),
        (format!("{q}?from=5&to=5"), 400, "bad_range"),
        (format!("{q}?from=yesterday"), 400, "bad_time"),
        (format!("{q}?from=99999999999999999999"), 400, "bad_time"),
        (
            format!("{q}?from=-9223372036854775808&to=9223372036854775807"),
            400,
            "bad_time",
        ),
        (
            format!("{q}?from=0&to=100000000000"),
            400,
            "too_many_buckets",
        ),
        (
            format!("{q}?group_by=properties.nope"),
            400,
            "unknown_dimension",
        ),
        (
            format!("{q}?group_by=properties.page,properties.page"),
            400,
            "bad_parameter",
        ),
        (format!("{q}?filter=properties.page"), 400, "bad_filter"),
        (format!("{q}?filter=user_id:x"), 400, "unknown_dimension"),
        (format!("{q}?measures=nope"), 400, "unknown_measure"),
        (format!("{q}?measures=,"), 400, "unknown_measure"),
        (format!("{q}?limit=3"), 400, "unknown_parameter"),
        (format!("{q}?from=1&from=2"), 400, "bad_parameter"),
        (format!("{q}?from=%zz"), 400, "bad_parameter"),
        (format!("{q}?from=%ff"), 400, "bad_parameter"),
        (format!("{q}?interval=1ms"), 400, "bad_parameter"),
        (format!("{q}?quantiles=1.5"), 400, "bad_quantiles"),
        (format!("{q}?quantiles=-0.1"), 400, "bad_quantiles"),
        (format!("{q}?quantiles=0.5,p99"), 400, "bad_quantiles"),
        (format!("{q}?quantiles=NaN"), 400, "bad_quantiles"),
        (format!("{q}?quantiles=0.5,,0.9"), 400, "bad_quantiles"),
        (
            format!("{q}?quantiles={}", vec!["0.5"; 33].join(",")),
            400,
            "bad_quantiles",
        ),
        (
            format!("{q}?quantiles=0.5&quantiles=0.9"),
            400,
            "bad_parameter",
        ),
        ("/api/v1/nothing".into(), 404, "not_found"),
        (
            "/api/v1/views/pv/stream?granularity=7m".into(),
            400,
            "bad_granularity",
        ),
    ];
    for (uri, status, code) in cases {
        let (s, body) = get(&app, &uri).await;
        assert_eq!(s.as_u16(), status, "{uri}: {body}");
        assert_eq!(body["code"], code, "{uri}: {body}");
        if code == "bad_quantiles" {
            // The message names the parameter.
            assert!(
                body["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("`quantiles`"),
                "{uri}: {body}"
            );
        }
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{uri}"
        );
    }
    // Wrong method: 405 JSON.
    let (s, body) = send(
        &app,
        Request::post("/api/v1/views")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(s, 405);
    assert_eq!(body["code"], "method_not_allowed");
}

#[tokio::test]
async fn recompute_needs_the_admin_token_and_says_not_available() {
    let mut cfg = config(&dead_redis(), "t");
    let post = |auth: Option<&str>, body: &str| {
        let mut r =
            Request::post("/api/v1/recompute").header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = auth {
            r = r.header(header::AUTHORIZATION, format!("Bearer {a}"));
        }
        r.body(Body::from(body.to_owned())).expect("req")
    };
    let app = app_with(cfg.clone(), Arc::new(InMemory::new()));
    let (s, body) = send(&app, post(Some("x"), "{}")).await;
    assert_eq!(
        (s.as_u16(), body["code"].as_str()),
        (403, Some("admin_disabled"))
    );

    cfg.serve.admin_token = Some("s3cret".into());
    let app = app_with(cfg, Arc::new(InMemory::new()));
    let (s, body) = send(&app, post(None, "{}")).await;
    assert_eq!(
        (s.as_u16(), body["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, body) = send(&app, post(Some("wrong"), "{}")).await;
    assert_eq!(
        (s.as_u16(), body["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, body) = send(&app, post(Some("s3cret"), "{not json")).await;
    assert_eq!(s.as_u16(), 400, "{body}");
    assert!(body["code"].is_string());
    let (s, body) = send(&app, post(Some("s3cret"), r#"{"view":"nope"}"#)).await;
    assert_eq!(
        (s.as_u16(), body["code"].as_str()),
        (400, Some("unknown_view"))
    );
    let (s, body) = send(
        &app,
        post(
            Some("s3cret"),
            r#"{"view":"pv","from":"2024-01-01T00:00:00Z"}"#,
        ),
    )
    .await;
    assert_eq!(
        (s.as_u16(), body["code"].as_str()),
        (501, Some("not_available"))
    );
    let big = format!(r#"{{"view":"{}"}}"#, "x".repeat(200_000));
    let (s, body) = send(&app, post(Some("s3cret"), &big)).await;
    assert_eq!(s.as_u16(), 413, "{body}");
    assert_eq!(body["code"], "payload_too_large");
}

#[tokio::test]
async fn read_token_guards_reads_when_configured() {
    let mut cfg = config(&dead_redis(), "t");
    cfg.serve.read_token = Some("r34d".into());
    let app = app_with(cfg, Arc::new(InMemory::new()));
    let (s, body) = get(&app, "/api/v1/views").await;
    assert_eq!(
        (s.as_u16(), body["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let req = Request::get("/api/v1/views")
        .header(header::AUTHORIZATION, "Bearer r34d")
        .body(Body::empty())
        .expect("req");
    let (s, _) = send(&app, req).await;
    assert_eq!(s, 200);
    let (s, _) = get(&app, "/api/v1/views?access_token=r34d").await;
    assert_eq!(s, 200);
    // The page and the API description stay open.
    let (s, _) = get(&app, "/").await;
    assert_eq!(s, 200);
    let (s, _) = get(&app, "/openapi.json").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn redis_down_answers_from_the_snapshot_and_says_degraded() {
    let evs = events(21, 1500);
    let store = Arc::new(InMemory::new());
    let cut = T0 / EPOCH_MS + 30;
    publish_snapshot(&store, &view(), &evs, cut, "r").await;
    let opts = ServeOptions {
        redis_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let state = AppState::new(config(&dead_redis(), "t"), store, opts).expect("state");
    state.refresh().await;
    let app = router(state);
    let q = Q {
        from: T0,
        to: T0 + SPAN_MS,
        gran: Granularity::HOUR,
        group_by: vec![],
        filters: vec![],
        measures: vec!["views"],
    };
    let started = std::time::Instant::now();
    let (s, body) = get(&app, &q.url()).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["degraded"], serde_json::json!(["redis"]));
    let want = evs.iter().filter(|e| e.epoch < cut).count() as u64;
    assert_eq!(body["totals"]["views"].as_u64(), Some(want));
    let (s, body) = get(&app, "/api/v1/status").await;
    assert_eq!(s, 200);
    assert!(body["degraded"]
        .as_array()
        .expect("d")
        .iter()
        .any(|d| d == "redis"));
    assert_eq!(body["views"][0]["cut"].as_i64(), Some(cut));
}

#[tokio::test]
async fn a_broken_snapshot_keeps_the_previous_one_and_says_degraded() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let evs = events(22, 1500);
    let store = Arc::new(InMemory::new());
    let cut = T0 / EPOCH_MS + 30;
    publish_snapshot(&store, &view(), &evs, cut, "good").await;
    write_speed(&redis.url(), "t", &view(), &evs).await;
    let state = AppState::new(
        config(&redis.url(), "t"),
        store.clone(),
        ServeOptions::default(),
    )
    .expect("state");
    state.refresh().await;
    let app = router(state.clone());
    // A newer manifest whose day file is garbage.
    let mut m: serde_json::Value = serde_json::from_slice(
        &store
            .get(&Path::from("views/pv/_manifest.json"))
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes"),
    )
    .expect("json");
    m["run_id"] = "bad".into();
    m["cut"] = (cut + 5).into();
    let bad_path = m["days"][0]["path"]
        .as_str()
        .expect("path")
        .replace("run=good", "run=bad");
    m["days"][0]["path"] = bad_path.clone().into();
    store
        .put(
            &Path::from(bad_path.as_str()),
            PutPayload::from_static(b"not parquet"),
        )
        .await
        .expect("put");
    store
        .put(
            &Path::from("views/pv/_manifest.json"),
            PutPayload::from(serde_json::to_vec(&m).expect("m")),
        )
        .await
        .expect("put");
    assert_eq!(state.refresh().await, 0);
    let q = Q {
        from: T0,
        to: T0 + SPAN_MS,
        gran: Granularity::HOUR,
        group_by: vec![0],
        filters: vec![],
        measures: vec!["views", "users"],
    };
    let (s, body) = get(&app, &q.url()).await;
    assert_eq!(s, 200);
    assert_eq!(body["degraded"], serde_json::json!(["store"]));
    assert_eq!(body["cut"].as_i64(), Some(cut), "the good snapshot stays");
    assert_eq!(body["totals"]["views"].as_u64(), Some(evs.len() as u64));
    // A garbage manifest too.
    store
        .put(
            &Path::from("views/pv/_manifest.json"),
            PutPayload::from_static(b"{\"version\":\"9\"}"),
        )
        .await
        .expect("put");
    state.refresh().await;
    let (s, body) = get(&app, &q.url()).await;
    assert_eq!(s, 200);
    assert_eq!(body["degraded"], serde_json::json!(["store"]));
    assert_eq!(body["totals"]["views"].as_u64(), Some(evs.len() as u64));
}

#[tokio::test]
async fn views_status_metrics_openapi_and_page_answer() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let store = Arc::new(InMemory::new());
    let evs = events(23, 300);
    publish_snapshot(&store, &view(), &evs, T0 / EPOCH_MS + 20, "r1").await;
    store
        .put(&Path::from("archive/progress/events/0000.json"), PutPayload::from_static(br#"{"version":"1","topic":"events","partition":0,"archived_to":90,"high_watermark":100,"observed_ms":5}"#))
        .await
        .expect("put");
    store
        .put(
            &Path::from("archive/cut.json"),
            PutPayload::from_static(br#"{"version":"1","cut":42,"decided_ms":7}"#),
        )
        .await
        .expect("put");
    let client = redis::Client::open(redis.url()).expect("c");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let _: () = redis::cmd("HSET")
        .arg("t:off")
        .arg("events/0")
        .arg(95)
        .query_async(&mut conn)
        .await
        .expect("hset");
    let state =
        AppState::new(config(&redis.url(), "t"), store, ServeOptions::default()).expect("state");
    state.refresh().await;
    let app = router(state);

    let (s, body) = get(&app, "/api/v1/views").await;
    assert_eq!(s, 200);
    assert_eq!(body["views"][0]["name"], "pv");
    assert_eq!(body["views"][0]["granularity"], "1m");
    assert_eq!(body["views"][0]["measures"][4]["agg"], "distinct");
    assert_eq!(body["views"][0]["cut"].as_i64(), Some(T0 / EPOCH_MS + 20));

    let (s, body) = get(&app, "/api/v1/status").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["degraded"], serde_json::json!([]));
    assert_eq!(body["archive_cut"], 42);
    assert_eq!(body["partitions"][0]["speed_offset"], 95);
    assert_eq!(body["partitions"][0]["speed_lag"], 5);
    assert_eq!(body["partitions"][0]["archive_lag"], 10);
    assert_eq!(body["views"][0]["last_run_id"], "r1");
    assert_eq!(body["views"][0]["definition_matches"], true);

    let _ = get(&app, "/api/v1/views/pv/query").await;
    let resp = tower::ServiceExt::oneshot(
        app.clone(),
        Request::get("/metrics").body(Body::empty()).expect("r"),
    )
    .await
    .expect("m");
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("b")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf8");
    assert!(text.contains("tally_serving_requests_total"), "{text}");

    let (s, doc) = get(&app, "/openapi.json").await;
    assert_eq!(s, 200);
    for p in [
        "/api/v1/views",
        "/api/v1/views/{view}/query",
        "/api/v1/status",
        "/api/v1/recompute",
        "/metrics",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} missing from openapi");
    }
    assert!(doc["components"]["schemas"]["QueryResponse"].is_object());
    let view_param = &doc["paths"]["/api/v1/views/{view}/query"]["get"]["parameters"][0];
    assert_eq!(view_param["name"], "view");
    assert_eq!(view_param["schema"]["enum"], serde_json::json!(["pv"]));

    let resp = tower::ServiceExt::oneshot(
        app.clone(),
        Request::get("/").body(Body::empty()).expect("r"),
    )
    .await
    .expect("page");
    assert_eq!(resp.status(), 200);
    let page = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("b")
        .to_bytes();
    assert!(String::from_utf8_lossy(&page).contains("EventSource"));
}

#[tokio::test]
async fn cost_caps_answer_4xx_naming_the_limit() {
    let store = Arc::new(InMemory::new());
    let evs = events(24, 2000);
    publish_snapshot(&store, &view(), &evs, T0 / EPOCH_MS + 48, "caps").await;
    let mut cfg = config(&dead_redis(), "t");
    cfg.serve.max_cells = 10;
    cfg.serve.max_filters = 2;
    cfg.serve.max_streams = 1;
    let state = AppState::new(
        cfg,
        store,
        ServeOptions {
            redis_timeout: std::time::Duration::from_millis(300),
            ..Default::default()
        },
    )
    .expect("state");
    state.refresh().await;
    let app = router(state);
    let span = format!("from={T0}&to={}", T0 + SPAN_MS);
    // Buckets x groups: 48 hourly buckets of one group, or 2 daily buckets
    // of every page and country, both pass alone; 48 x 15 does not.
    let q = "/api/v1/views/pv/query";
    let (s, _) = get(&app, &format!("{q}?{span}&granularity=1d&group_by=properties.page,properties.country&measures=views&filter=properties.page:/a")).await;
    assert_eq!(s, 200);
    let (s, body) = get(
        &app,
        &format!("{q}?{span}&granularity=1h&group_by=properties.page,properties.country"),
    )
    .await;
    assert_eq!(
        (s.as_u16(), body["code"].as_str()),
        (400, Some("too_many_cells")),
        "{body}"
    );
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("10") && msg.contains("serve.max_cells"),
        "{msg}"
    );

    let (s, body) = get(
        &app,
        &format!("{q}?{span}&granularity=1d&filter=properties.page:/a&filter=properties.page:/b&filter=properties.country:de"),
    )
    .await;
    assert_eq!(
        (s.as_u16(), body["code"].as_str()),
        (400, Some("too_many_filters")),
        "{body}"
    );
    assert!(body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("serve.max_filters"));

    let (s, body) = get(&app, &format!("{q}?from=0&to=100000000000")).await;
    assert_eq!(
        (s.as_u16(), body["code"].as_str()),
        (400, Some("too_many_buckets"))
    );
    assert!(body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("serve.max_buckets"));

    // One stream at a time: the first holds its permit while its body lives.
    let stream = format!("/api/v1/views/pv/stream?{span}&granularity=1d");
    let first = tower::ServiceExt::oneshot(
        app.clone(),
        Request::get(&stream).body(Body::empty()).expect("req"),
    )
    .await
    .expect("first stream");
    assert_eq!(first.status(), 200);
    let (s, body) = get(&app, &stream).await;
    assert_eq!(
        (s.as_u16(), body["code"].as_str()),
        (429, Some("too_many_streams")),
        "{body}"
    );
    assert!(body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("serve.max_streams"));
    drop(first);
    let again = tower::ServiceExt::oneshot(
        app.clone(),
        Request::get(&stream).body(Body::empty()).expect("req"),
    )
    .await
    .expect("stream");
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn the_recompute_hooks_error_decides_the_status() {
    let mut cfg = config(&dead_redis(), "t");
    cfg.serve.admin_token = Some("s3cret-0123456789".into());
    let cases = [
        (
            RecomputeError::BadRequest("from after to".into()),
            400,
            "bad_request",
        ),
        (
            RecomputeError::Busy("locked".into()),
            409,
            "recompute_refused",
        ),
        (
            RecomputeError::Failed("store gone".into()),
            500,
            "recompute_failed",
        ),
    ];
    for (error, status, code) in cases {
        let hook: RecomputeHook = Arc::new(move |_req: RecomputeRequest| {
            let e = error.clone();
            let fut: std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<String, RecomputeError>> + Send>,
            > = Box::pin(async move { Err(e) });
            fut
        });
        let opts = ServeOptions {
            redis_timeout: std::time::Duration::from_millis(300),
            recompute: Some(hook),
            ..Default::default()
        };
        let app =
            router(AppState::new(cfg.clone(), Arc::new(InMemory::new()), opts).expect("state"));
        let req = Request::post("/api/v1/recompute")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, "Bearer s3cret-0123456789")
            .body(Body::from(r#"{"view":"pv"}"#))
            .expect("req");
        let (s, body) = send(&app, req).await;
        assert_eq!(
            (s.as_u16(), body["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
}
