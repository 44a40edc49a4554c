//! `/healthz` says the process answers; `/readyz` says whether Redis, the
//! object store and every supervised role are there, and which one is not.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use object_store::memory::InMemory;
use tally_serving::{router, AppState, RolesProbe, ServeOptions};
use tally_testkit::Redis;

fn app(redis_url: &str, roles: Option<RolesProbe>) -> axum::Router {
    let opts = ServeOptions {
        redis_timeout: Duration::from_millis(300),
        roles,
        ..Default::default()
    };
    let state = AppState::new(config(redis_url, "t"), Arc::new(InMemory::new()), opts);
    router(state.expect("state"))
}

#[tokio::test]
async fn ready_when_redis_the_store_and_every_role_are_up_and_not_otherwise() {
    let mut redis = Redis::start().expect("redis");
    let speed_up = Arc::new(AtomicBool::new(true));
    let flag = speed_up.clone();
    let probe: RolesProbe = Arc::new(move || {
        vec![
            ("serve".to_owned(), true),
            ("speed".to_owned(), flag.load(Ordering::SeqCst)),
        ]
    });
    let app = app(&redis.url(), Some(probe));

    let (code, body) = get(&app, "/healthz").await;
    assert_eq!(
        (code, body["status"].as_str()),
        (StatusCode::OK, Some("alive"))
    );

    let (code, body) = get(&app, "/readyz").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["redis"], "ok", "{body}");
    assert_eq!(body["checks"]["store"], "ok", "{body}");
    assert_eq!(body["checks"]["role:speed"], "up", "{body}");

    // A role waiting for its restart makes the process not ready.
    speed_up.store(false, Ordering::SeqCst);
    let (code, body) = get(&app, "/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["role:speed"], "restarting", "{body}");
    speed_up.store(true, Ordering::SeqCst);

    // Redis gone: not ready, said so, and still alive; back: ready again.
    redis.stop();
    let (code, body) = get(&app, "/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["checks"]["redis"].as_str().is_some_and(|s| s != "ok"),
        "{body}"
    );
    assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
    redis.restart_empty().expect("redis again");
    let mut ready = false;
    for _ in 0..50 {
        if get(&app, "/readyz").await.0 == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "not ready again after Redis came back");
}

#[tokio::test]
async fn the_probes_need_no_token_and_show_no_secret() {
    let redis = Redis::start().expect("redis");
    let mut cfg = config(&redis.url(), "t");
    cfg.serve.read_token = Some("r34d-0123456789abcdef".into());
    cfg.redis.url = redis.url().replace("redis://", "redis://tally:pw-9913@");
    let opts = ServeOptions {
        redis_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let app = router(AppState::new(cfg, Arc::new(InMemory::new()), opts).expect("state"));
    let (code, _) = get(&app, "/healthz").await;
    assert_eq!(code, StatusCode::OK);
    let (_, body) = get(&app, "/readyz").await;
    let text = body.to_string();
    assert!(!text.contains("pw-9913"), "{text}");
    assert!(body["checks"]["redis"].is_string(), "{text}");
}
