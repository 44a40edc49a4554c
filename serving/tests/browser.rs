//! The dashboard in a real headless Chromium (Debian's `chromium`, driven over
//! WebDriver by `chromedriver`, both installed by `infra/install`).
//!
//! A real server runs on a free port over known data: a snapshot (events with
//! an ingest epoch below the cut) in a `memory://` store and every event's
//! speed slice in a private Redis. The page is opened on a fixed range grouped
//! by page; the test then reads what the page shows (the `data-total` of every
//! measure card, the `data-value` of every table cell, the cut) and checks it
//! equals both the query API's answer and the truth folded from the events.
//! Then it writes a new speed-layer delta and checks the page shows the new
//! totals within a few seconds (live over server-sent events). The view
//! counts each event_id once (`dedup`), so the page must also say what the
//! API says: that the live part may still hold retried events.
//!
//! The WebDriver client is a few HTTP/1.0 calls over a TCP socket (new
//! session, navigate, run a script, delete session): no extra crate. A missing
//! chromium or chromedriver skips the test outside CI and fails it in CI.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use object_store::memory::InMemory;
use serde_json::{json, Value};
use tally_core::agg::Num;
use tally_serving::ServeOptions;

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`; the body
/// ends at EOF, chunked bodies are decoded). Blocking: used from
/// `spawn_blocking` and from `Drop`. (chromedriver refuses HTTP/1.0.)
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(90)))
        .expect("timeout");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    // Read to the end of the body: Content-Length when given (chromedriver
    // keeps the connection open), else EOF.
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())
                    .flatten()
            });
            if len.is_some_and(|len| body.len() >= len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, json)
}

/// The payload of a chunked body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A chromedriver process and, once created, its browser session; both end on drop.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: Option<String>,
    _profile: tempdir::Dir,
}

mod tempdir {
    /// A fresh folder removed on drop (Chromium's `--user-data-dir`).
    pub(crate) struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub(crate) fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "tally-{tag}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Browser {
    fn start(chromedriver: &std::path::Path, chromium: &std::path::Path) -> Browser {
        let port = tally_testkit::free_port().expect("port");
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let profile = tempdir::Dir::new("chromium");
        let mut b = Browser {
            driver,
            addr,
            session: None,
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,900",
                    format!("--user-data-dir={}", b._profile.0.display()),
                ]
            }
        }}});
        let (status, resp) = http(addr, "POST", "/session", Some(&caps));
        assert_eq!(status, 200, "new session: {resp}");
        let id = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id: {resp}"))
            .to_owned();
        b.session = Some(id);
        b
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session.as_deref().unwrap_or(""))
    }

    fn goto(&self, url: &str) {
        let (status, resp) = http(
            self.addr,
            "POST",
            &self.path("/url"),
            Some(&json!({"url": url})),
        );
        assert_eq!(status, 200, "navigate: {resp}");
    }

    /// Run `script` (a function body) in the page and return its value.
    fn eval(&self, script: &str) -> Value {
        let (status, resp) = http(
            self.addr,
            "POST",
            &self.path("/execute/sync"),
            Some(&json!({"script": script, "args": []})),
        );
        assert_eq!(status, 200, "execute: {resp}");
        resp["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = std::panic::catch_unwind(|| http(self.addr, "DELETE", &self.path(""), None));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// What the page shows, read from its data attributes.
const READ_PAGE: &str = r##"
const bar = document.getElementById("bar");
const totals = {};
for (const c of document.querySelectorAll("#cards .card")) totals[c.dataset.measure] = c.dataset.total;
const groups = {};
for (const tr of document.querySelectorAll("#groups tr")) {
  const row = {};
  for (const td of tr.querySelectorAll("td[data-measure]")) row[td.dataset.measure] = td.dataset.value;
  groups[tr.dataset.group] = row;
}
return { updates: Number(bar.dataset.updates || 0), cut: bar.dataset.cut, degraded: bar.dataset.degraded,
         duplicates: bar.dataset.duplicates || "",
         duplicates_badge: document.querySelectorAll("#health [data-duplicates]").length,
         conn: document.getElementById("conn").dataset.state || "", error: document.getElementById("error").textContent,
         totals, groups };
"##;

/// The page's text value of a measure as a JSON number (empty: null).
fn num(v: &Value) -> Value {
    match v.as_str() {
        Some("") | None => Value::Null,
        Some(s) => serde_json::from_str(s).unwrap_or(Value::Null),
    }
}

/// The same number (JavaScript prints 12.0 as "12") or both null.
fn same(a: &Value, b: &Value) -> bool {
    a.is_null() == b.is_null() && a.as_f64() == b.as_f64()
}

/// What the page shows of an API value: a quantiles measure (`lat`) as its
/// highest percentile (p99 by default), the others as they are. (The API's
/// quantiles are checked against the truth by the merge tests.)
fn top<'a>(m: &str, v: &'a Value) -> &'a Value {
    if m == "lat" {
        &v["0.99"]
    } else {
        v
    }
}

/// The page's label for a group of one dimension (as the page writes it).
fn label(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "∅".into())
}

/// Check the page against an API answer and the truth of `evs`.
fn check(page: &Value, api: &Value, evs: &[Ev], q: &Q) {
    assert_eq!(page["degraded"], "", "{page}");
    assert_eq!(page["cut"], api["cut"].to_string(), "{page}");
    let flagged = api["speed_may_hold_duplicates"] == true;
    assert_eq!(page["duplicates"] == "1", flagged, "{page} vs {api}");
    assert_eq!(page["duplicates_badge"] == 1, flagged, "{page}");
    // Totals: page = API = truth.
    let mut grand = Expect::default();
    let mut per_page: BTreeMap<String, Expect> = BTreeMap::new();
    for ((_, g), e) in q.truth(evs) {
        grand.merge(&e);
        per_page.entry(label(&g[0])).or_default().merge(&e);
    }
    for m in MEASURES {
        let shown = num(&page["totals"][m]);
        assert!(
            same(&shown, top(m, &api["totals"][m])),
            "total {m}: page {page} vs api {}",
            api["totals"]
        );
        if m != "lat" {
            check_value(m, &shown, &grand, &format!("page total {m}"));
        }
    }
    // Every group row: page = API = truth.
    let series = api["series"].as_array().expect("series");
    assert_eq!(
        page["groups"].as_object().map_or(0, |g| g.len()),
        series.len(),
        "{page}"
    );
    for s in series {
        let l = label(&s["group"]["properties.page"].as_str().map(str::to_owned));
        for m in MEASURES {
            let shown = num(&page["groups"][&l][m]);
            assert!(
                same(&shown, top(m, &s["totals"][m])),
                "group {l} {m}: {shown} vs {}",
                s["totals"][m]
            );
            if m != "lat" {
                check_value(m, &shown, &per_page[&l], &format!("page group {l} {m}"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_api_numbers_and_follows_live_updates() {
    let Some(chromium) = external_tool(
        &["chromium", "chromium-browser", "google-chrome"],
        "install Debian's `chromium`",
    ) else {
        return;
    };
    let Some(chromedriver) = external_tool(&["chromedriver"], "install Debian's `chromium-driver`")
    else {
        return;
    };
    let redis = tally_testkit::Redis::start().expect("redis");
    let mut evs = events(101, 2500);
    let cut = T0 / EPOCH_MS + 24;
    let store = Arc::new(InMemory::new());
    let mut view = view();
    view.dedup = Some("event_id".into());
    publish_snapshot(&store, &view, &evs, cut, "browser-run").await;
    write_speed(&redis.url(), "t", &view, &evs).await;
    let mut cfg = config(&redis.url(), "t");
    cfg.views = vec![view.clone()];
    let (addr, stop, server) = start_server(
        cfg,
        store,
        ServeOptions {
            poll_interval: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .await;

    let q = Q {
        from: T0,
        to: T0 + SPAN_MS,
        gran: "1h".parse().expect("granularity"),
        group_by: vec![0],
        filters: vec![],
        measures: MEASURES.to_vec(),
    };
    let api_path = format!(
        "/api/v1/views/pv/query?from={}&to={}&granularity=1h&group_by=properties.page",
        q.from, q.to
    );
    let page_url = format!(
        "http://{addr}/#view=pv&from={}&to={}&granularity=1h&group_by=properties.page&measure=views&interval=1s",
        q.from, q.to
    );

    let browser = tokio::task::spawn_blocking(move || {
        let b = Browser::start(&chromedriver, &chromium);
        b.goto(&page_url);
        b
    })
    .await
    .expect("browser");
    let browser = Arc::new(browser);

    // Wait for the first rendered answer.
    let read = |b: Arc<Browser>| async move {
        tokio::task::spawn_blocking(move || b.eval(READ_PAGE))
            .await
            .expect("eval")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut page = read(browser.clone()).await;
    while page["updates"].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the page showed nothing: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        page = read(browser.clone()).await;
    }
    assert_eq!(page["error"], "", "{page}");
    assert_eq!(page["conn"], "live", "{page}");
    let (status, api) = tokio::task::spawn_blocking(move || http(addr, "GET", &api_path, None))
        .await
        .expect("api");
    assert_eq!(status, 200, "{api}");
    assert_eq!(api["cut"].as_i64(), Some(cut));
    assert_eq!(api["speed_may_hold_duplicates"], true, "{api}");
    check(&page, &api, &evs, &q);

    // A live update: new events in the speed layer (epoch at the cut, so they
    // count) appear on the page without a reload.
    let new: Vec<Ev> = (0..7)
        .map(|i| Ev {
            t: T0 + 30 * 3_600_000 + i * 1000,
            epoch: cut + 6,
            page: Some("/home".into()),
            country: Some("de".into()),
            duration: Some(Num::Int(1000 + i)),
            user: format!("late_user_{i}"),
        })
        .collect();
    let before = page["totals"]["views"].clone();
    write_speed(&redis.url(), "t", &view, &new).await;
    evs.extend(new);
    let written = Instant::now();
    let want_views = (evs.len() as u64).to_string();
    let deadline = written + Duration::from_secs(8);
    loop {
        page = read(browser.clone()).await;
        if page["totals"]["views"].as_str() == Some(want_views.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page still shows views={before} 8 s after the new delta (want {want_views}): {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "live update shown {:.1} s after the write",
        written.elapsed().as_secs_f64()
    );
    let api_path = format!(
        "/api/v1/views/pv/query?from={}&to={}&granularity=1h&group_by=properties.page",
        q.from, q.to
    );
    let (_, api) = tokio::task::spawn_blocking(move || http(addr, "GET", &api_path, None))
        .await
        .expect("api");
    check(&page, &api, &evs, &q);
    assert_eq!(page["totals"]["longest"], "1006", "{page}");

    drop(browser);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops")
        .expect("join")
        .expect("serve ok");
}
