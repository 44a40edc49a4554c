//! The real server on a free port: `serve_on` answers HTTP, the SSE stream
//! carries the same numbers as the query endpoint, and shutdown is clean.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use object_store::memory::InMemory;
use tally_serving::ServeOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 GET; reads until `until` appears in the response (or EOF).
async fn http_get(addr: std::net::SocketAddr, path: &str, until: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("read in time")
            .expect("read");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&out).contains(until) {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON after the headers (non-chunked bodies are enough for the query;
/// the stream's `data:` line is parsed separately).
fn data_line(text: &str) -> serde_json::Value {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("data line");
    serde_json::from_str(line).expect("json data")
}

#[tokio::test]
async fn serve_on_answers_and_streams_the_same_numbers() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let evs = events(41, 1200);
    let store = Arc::new(InMemory::new());
    publish_snapshot(&store, &view(), &evs, T0 / EPOCH_MS + 24, "live").await;
    write_speed(&redis.url(), "t", &view(), &evs).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tally_serving::serve_on(
        listener,
        config(&redis.url(), "t"),
        store,
        ServeOptions {
            poll_interval: Duration::from_millis(200),
            ..Default::default()
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let range = format!(
        "from={T0}&to={}&granularity=1h&group_by=properties.page",
        T0 + SPAN_MS
    );
    let text = http_get(
        addr,
        &format!("/api/v1/views/pv/stream?{range}&interval=500ms"),
        "\n\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("text/event-stream"));
    assert!(text.contains("event: result"), "{text}");
    let streamed = data_line(&text);
    assert_eq!(streamed["totals"]["views"].as_u64(), Some(evs.len() as u64));
    assert_eq!(streamed["degraded"], serde_json::json!([]));
    assert_eq!(streamed["cut"].as_i64(), Some(T0 / EPOCH_MS + 24));

    let text = http_get(
        addr,
        &format!("/api/v1/views/pv/query?{range}"),
        "\"totals\"",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // `last` instead of `from`: the same range when `to` is the same.
    let text2 = http_get(
        addr,
        &format!(
            "/api/v1/views/pv/stream?last=48h&to={}&granularity=1h&group_by=properties.page",
            T0 + SPAN_MS
        ),
        "\n\n",
    )
    .await;
    let by_last = data_line(&text2);
    assert_eq!(by_last["from_ms"].as_i64(), Some(T0));
    assert_eq!(by_last["totals"], streamed["totals"]);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops")
        .expect("join")
        .expect("serve ok");
}

#[tokio::test]
async fn open_streams_end_when_the_server_shuts_down() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let evs = events(43, 300);
    let store = Arc::new(InMemory::new());
    publish_snapshot(&store, &view(), &evs, T0 / EPOCH_MS + 24, "live").await;
    let (addr, stop, server) =
        start_server(config(&redis.url(), "t"), store, ServeOptions::default()).await;
    // Two clients follow a stream and never hang up.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET /api/v1/views/pv/stream?from={T0}&to={}&interval=500ms HTTP/1.1\r\nHost: test\r\n\r\n",
            T0 + SPAN_MS
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; 65536];
        let n = s.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        clients.push(s);
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops although streams were open")
        .expect("join")
        .expect("serve ok");
    // And the clients see their streams end.
    for mut s in clients {
        let mut buf = vec![0u8; 65536];
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the stream did not end");
    }
}
