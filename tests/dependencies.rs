//! `tally run` outlives its dependencies.
//!
//! One `tally run` process (speed, archive, the batch scheduler and serve)
//! works against real Tansu (behind a TCP proxy, so that it can vanish for
//! the clients and come back with its records), real Redis and a `file://`
//! store on a small tmpfs of its own.
//! While events flow, each dependency fails in turn:
//!
//! | fault | how |
//! |---|---|
//! | broker down | every connection to Tansu cut and refused for longer than the archiver's broker timeout, then allowed again |
//! | Redis down | redis-server killed, then started empty (a Redis without persistence) |
//! | store read-only | the store's tmpfs remounted read-only, then read-write |
//! | store full | the store's tmpfs filled to the last byte, then the filler removed |
//!
//! The process is also started with the broker cut off and the store
//! read-only, and must come up and serve, then catch up once they are back.
//! During each fault the process stays up and serving answers: exactly as
//! the fold where it still can (broker or store away), and saying `degraded`
//! where it cannot (Redis away). After each fault, without restarting the
//! process, every role recovers: the API counts every event again with
//! nothing degraded, the archiver publishes a new cut, the scheduler a new
//! batch run, and random queries answer as the fold. Last, SIGTERM with SSE
//! clients connected ends the process, cleanly, within a bounded time.
//!
//! Remounting needs root (CI runs as root); elsewhere the test says it is
//! skipped and returns.

mod answers;
mod role;
mod stack;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use answers::{get, random_query, settle, PfCount};
use rand::rngs::StdRng;
use rand::SeedableRng;
use role::Role;
use stack::{Setup, Stack};
use tally_core::time::now_ms;
use tally_gen::{Generator, ProduceOptions, Shape};
use tally_testkit::config::TOPIC;
use tally_testkit::truth::Truth;
use tally_testkit::Broker;

const PARTITIONS: i32 = 4;
const PHASE_EVENTS: u64 = 8_000;
const RATE: f64 = 4_000.0;
const QUERIES: usize = 15;
const MAX_LATE_MS: i64 = 6 * 3_600_000;
/// How long a fault lasts at least (longer than the archiver's 10 s of
/// patience with an absent broker).
const FAULT: Duration = Duration::from_secs(15);
const RECOVERY: Duration = Duration::from_secs(180);
/// Bound on SIGTERM-to-exit with SSE clients connected.
const SHUTDOWN: Duration = Duration::from_secs(30);

/// Speed and archive read every partition (Tansu has no usable group
/// failover; see the speed layer's notes).
const ENV: &[(&str, &str)] = &[("TALLY_KAFKA__ASSIGNMENT", "all")];

/// A tmpfs mounted for the test's life: the object store's disk.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, megabytes: u32) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        sh(
            &[
                "mount",
                "-t",
                "tmpfs",
                "-o",
                &format!("size={megabytes}m"),
                "tmpfs",
            ],
            path,
        );
        Tmpfs { path: path.into() }
    }

    fn remount(&self, mode: &str) {
        sh(&["mount", "-o", &format!("remount,{mode}")], &self.path);
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Write until the disk says it is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).expect("filler");
        let chunk = vec![0u8; 1 << 20];
        loop {
            if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_data()) {
                assert_eq!(e.raw_os_error(), Some(28), "filling the store: {e}");
                return;
            }
        }
    }

    fn unfill(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// `args… path`, which must succeed.
fn sh(args: &[&str], path: &Path) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .arg(path)
        .status()
        .expect("run mount");
    assert!(status.success(), "{args:?} {} failed", path.display());
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The platform under test and what it has been sent.
struct Run {
    stack: Stack,
    store: Tmpfs,
    tally: Option<Role>,
    truth: Truth,
    generator: Generator,
    rt: tokio::runtime::Runtime,
    rng: StdRng,
    started_ms: i64,
}

impl Run {
    /// The services, then `tally run` once `prepare` has had its way with
    /// the broker and the store (a test may break them first).
    fn start(prepare: impl FnOnce(&mut Broker, &Tmpfs)) -> Run {
        let dir = stack::dir("dependencies");
        let store = Tmpfs::mount(&dir.path().join("store"), 256);
        let setup = Setup {
            behind_proxy: true,
            store: Some(format!("file://{}", store.path.display())),
            extra: "[batch]\nschedule = \"*/5 * * * * *\"".into(),
            ..Setup::default()
        };
        let mut stack = Stack::start("dependencies", dir, PARTITIONS, setup);
        let cfg = stack.cfg.clone();
        prepare(&mut stack.broker, &store);
        let tally = Role::start(&["run"], &stack.config, &stack.log("tally"), ENV);
        let mut shape = Shape::default().with_limits(cfg.events.limits());
        shape.late_share = 0.05;
        shape.max_late = tally_core::config::Millis(MAX_LATE_MS);
        shape.out_of_order_share = 0.2;
        shape.malformed_share = 0.01;
        shape.check().expect("shape");
        let run = Run {
            truth: Truth::new(&cfg),
            generator: Generator::new(shape, 7).expect("generator"),
            rt: tokio::runtime::Runtime::new().expect("runtime"),
            rng: StdRng::seed_from_u64(15),
            started_ms: now_ms(),
            tally: Some(tally),
            stack,
            store,
        };
        run.wait_for(Duration::from_secs(60), "the API", || {
            ureq::get(&format!("{}/healthz", run.stack.api))
                .call()
                .is_ok()
        });
        run
    }

    fn get(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        get(&self.stack.api, path_and_query)
    }

    /// The `daily` view's event count over every day an event can be in.
    fn daily(&self) -> (u16, serde_json::Value) {
        self.get(&format!(
            "/api/v1/views/daily/query?from={}&to={}&granularity=1d&measures=events",
            now_ms() - 3 * 86_400_000,
            now_ms() + 3_600_000
        ))
    }

    /// Produce a phase's events into the broker and the fold.
    fn produce(&mut self) {
        let mut options = ProduceOptions::new(TOPIC, RATE);
        options.count = Some(PHASE_EVENTS);
        answers::produce_folded(
            &self.rt,
            &self.stack.cfg.kafka,
            &mut self.generator,
            &options,
            &mut self.truth,
        );
    }

    /// Random queries, each equal to the fold (and nothing degraded).
    fn queries_are_exact(&mut self, context: &str) {
        let mut pf = PfCount::connect(&self.stack.redis.url());
        let now = now_ms();
        for _ in 0..QUERIES {
            let q = random_query(
                &mut self.rng,
                &self.truth,
                self.started_ms,
                now,
                MAX_LATE_MS,
            );
            let (code, body) = get(&self.stack.api, &q.url());
            assert_eq!(code, 200, "{context}: {}: {body}", q.url());
            q.compare(&body, &mut pf);
        }
    }

    fn alive(&mut self) {
        self.tally.as_mut().expect("tally run").assert_running();
        assert_eq!(self.get("/healthz").0, 200, "healthz");
    }

    /// `tally_role_restarts_total{role=...}` from the process's metrics.
    fn restarts(&self, role: &str) -> u64 {
        let text = ureq::get(&format!("{}/metrics", self.stack.api))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default();
        let series = format!("tally_role_restarts_total{{role=\"{role}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    fn wait_for(&self, timeout: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < timeout,
                "{what}: not within {timeout:?}; logs in {}",
                self.stack.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        started.elapsed()
    }

    /// Every event counted with nothing degraded; for a fault that stopped
    /// the archiver and the batch, also a cut and a batch run decided after
    /// `since_ms` (both roles are back); then random queries equal to the
    /// fold. How long until all of that.
    fn recovers(&mut self, fault: &str, since_ms: Option<i64>) -> Duration {
        let started = Instant::now();
        if let Err(last) = settle(&self.stack.api, &self.truth, RECOVERY) {
            panic!(
                "after {fault}: the API did not count every event again: {last}; logs in {}",
                self.stack.dir.path().display()
            );
        }
        let Some(since_ms) = since_ms else {
            let took = started.elapsed();
            self.queries_are_exact(&format!("after {fault}"));
            self.alive();
            return took;
        };
        self.wait_for(
            RECOVERY,
            &format!("after {fault}: a new cut and batch run"),
            || {
                let (_, s) = get(&self.stack.api, "/api/v1/status");
                let cut_ok = s["archive_cut_decided_ms"]
                    .as_i64()
                    .is_some_and(|t| t > since_ms);
                let runs_ok = s["views"].as_array().is_some_and(|vs| {
                    vs.iter().all(|v| {
                        v["last_run_created_ms"]
                            .as_i64()
                            .is_some_and(|t| t > since_ms)
                    })
                });
                cut_ok && runs_ok
            },
        );
        let took = started.elapsed();
        self.queries_are_exact(&format!("after {fault}"));
        self.alive();
        took
    }
}

#[test]
fn tally_run_outlives_broker_redis_and_store_faults_and_answers_as_the_fold() {
    if !is_root() {
        eprintln!("skipped: remounting the store's tmpfs needs root");
        return;
    }
    // Started with the broker cut off and the store read-only: the process
    // comes up and serves; the roles that need them wait.
    let mut run = Run::start(|broker, store| {
        broker.cut_off();
        store.remount("ro");
    });
    let mut figures: Vec<String> = Vec::new();
    std::thread::sleep(FAULT);
    run.alive();
    let (code, body) = run.daily();
    assert_eq!(
        code, 200,
        "a query while the broker and the store are away: {body}"
    );
    let restarts = run.restarts("speed") + run.restarts("archive");
    run.stack.broker.reconnect().expect("broker back");
    run.store.remount("rw");
    run.produce();
    let t = run.recovers("a start without broker and store", Some(0));
    note(
        &mut figures,
        format!("started without broker and writable store ({FAULT:?}): speed and archive restarts meanwhile {restarts}, recovered in {t:?}"),
    );

    // The broker away for longer than the archiver waits for it.
    let restarts = run.restarts("archive");
    run.stack.broker.cut_off();
    std::thread::sleep(FAULT);
    run.alive();
    run.queries_are_exact("broker down");
    run.stack.broker.reconnect().expect("broker back");
    let lifted = now_ms();
    run.produce();
    let t = run.recovers("the broker's absence", Some(lifted));
    note(
        &mut figures,
        format!(
            "broker down {FAULT:?}: archive restarts {}, recovered in {t:?}",
            run.restarts("archive") - restarts
        ),
    );

    // Redis away: answers say so; back empty, the speed layer rebuilds.
    let restarts = run.restarts("speed");
    run.stack.redis.stop();
    run.produce();
    run.alive();
    let (code, body) = run.daily();
    assert_eq!(code, 200, "a query with Redis down: {body}");
    assert!(
        body["degraded"].as_array().is_some_and(|d| !d.is_empty()),
        "Redis down, the answer must say it is degraded: {body}"
    );
    let (code, body) = run.get("/readyz");
    assert_eq!(code, 503, "readyz with Redis down: {body}");
    run.stack.redis.restart_empty().expect("redis back");
    let t = run.recovers("Redis's absence", None);
    note(
        &mut figures,
        format!(
            "Redis down, back empty: speed restarts {}, recovered in {t:?}",
            run.restarts("speed") - restarts
        ),
    );

    // The store read-only, then full: the archiver and the batch fail and
    // retry; answers stay exact from what is already there.
    for fault in ["read-only", "full"] {
        let restarts = run.restarts("archive");
        match fault {
            "read-only" => run.store.remount("ro"),
            _ => run.store.fill(),
        }
        run.produce();
        run.wait_for(
            RECOVERY,
            &format!("store {fault}: the archiver fails"),
            || run.restarts("archive") > restarts,
        );
        run.alive();
        // What the speed layer holds is enough to answer everything.
        if let Err(last) = settle(&run.stack.api, &run.truth, RECOVERY) {
            panic!("store {fault}: the API does not count every event: {last}");
        }
        run.queries_are_exact(&format!("store {fault}"));
        match fault {
            "read-only" => run.store.remount("rw"),
            _ => run.store.unfill(),
        }
        let lifted = now_ms();
        let t = run.recovers(&format!("the store {fault}"), Some(lifted));
        note(
            &mut figures,
            format!(
                "store {fault}: archive restarts {}, recovered in {t:?}",
                run.restarts("archive") - restarts
            ),
        );
    }

    // SIGTERM with dashboards streaming.
    let streams: Vec<TcpStream> = (0..4).map(|_| run.open_stream()).collect();
    let started = Instant::now();
    run.tally.take().expect("tally run").terminate();
    let took = started.elapsed();
    assert!(took < SHUTDOWN, "SIGTERM took {took:?} with SSE clients");
    note(
        &mut figures,
        format!(
            "SIGTERM with {} SSE clients: exited in {took:?}",
            streams.len()
        ),
    );
    eprintln!("{}", figures.join("\n"));
}

/// A figure for the closing summary, printed as it comes too.
fn note(figures: &mut Vec<String>, line: String) {
    eprintln!("{line}");
    figures.push(line);
}

impl Run {
    /// An SSE client of the `daily` view that has received its first event.
    fn open_stream(&self) -> TcpStream {
        let addr = self.stack.api.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).expect("connect for SSE");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let (from, to) = (now_ms() - 3 * 86_400_000, now_ms() + 3_600_000);
        write!(
            s,
            "GET /api/v1/views/daily/stream?from={from}&to={to}&granularity=1d&measures=events&interval=1s HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .expect("send the SSE request");
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("event: result") {
            let n = s.read(&mut buf).expect("read the SSE stream");
            assert!(
                n > 0,
                "SSE stream closed: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
        s
    }
}
