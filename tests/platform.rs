//! The whole platform against the plain fold.
//!
//! Real Tansu, real Redis and a `file://` object store; `tally speed`,
//! `tally archive` and `tally serve` run as separate processes. A generator
//! with late (up to a day), out-of-order and malformed events produces in
//! phases. During each phase the speed and archive roles are SIGKILLed and
//! restarted, and `tally batch run` is triggered, at random moments. After each
//! phase the platform settles, and many random queries over HTTP (ranges,
//! granularities, groupings, filters, measures) must answer as the fold over
//! everything produced so far: every count, sum, min and max equal, every
//! distinct within HyperLogLog error.

mod answers;
mod role;
mod stack;

use std::time::Duration;

use answers::{random_query, PfCount};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use role::Role;
use stack::{Setup, Stack};
use tally_core::time::now_ms;
use tally_gen::{Generator, ProduceOptions, Shape};
use tally_testkit::config::TOPIC;
use tally_testkit::truth::Truth;

const PARTITIONS: i32 = 4;
const PHASES: usize = 3;
const PHASE_EVENTS: u64 = 60_000;
const RATE: f64 = 15_000.0;
const QUERIES_PER_SETTLE: usize = 40;
const MAX_LATE_MS: i64 = 86_400_000;
/// The `[epochs] length` of the config below.
const EPOCH_MS: i64 = 10_000;

/// Every role of one platform under test.
struct Platform {
    stack: Stack,
    speed: Option<Role>,
    archive: Option<Role>,
    serve: Role,
}

/// Speed and archive read every partition in one process each (Tansu does
/// not hand a dead member's partitions on; see the speed layer's notes).
const ENV: &[(&str, &str)] = &[("TALLY_KAFKA__ASSIGNMENT", "all")];

impl Platform {
    fn start() -> Platform {
        let archive_metrics = tally_testkit::free_port().expect("port");
        let setup = Setup {
            archive: format!("metrics_listen = \"127.0.0.1:{archive_metrics}\""),
            ..Setup::default()
        };
        let stack = Stack::start("platform", stack::dir("platform"), PARTITIONS, setup);
        let serve = Role::start(&["serve"], &stack.config, &stack.log("serve"), ENV);
        let mut p = Platform {
            stack,
            speed: None,
            archive: None,
            serve,
        };
        p.speed = Some(p.role("speed"));
        p.archive = Some(p.role("archive"));
        p
    }

    fn role(&self, name: &str) -> Role {
        Role::start(&[name], &self.stack.config, &self.stack.log(name), ENV)
    }

    fn kill_and_restart(&mut self, name: &str) {
        let old = match name {
            "speed" => self.speed.take(),
            _ => self.archive.take(),
        };
        if let Some(r) = old {
            r.kill9();
        }
        let fresh = Some(self.role(name));
        match name {
            "speed" => self.speed = fresh,
            _ => self.archive = fresh,
        }
    }

    fn batch_run(&self) {
        self.stack.batch_run()
    }

    fn get(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        answers::get(&self.stack.api, path_and_query)
    }
}

/// Wait until the API counts every accepted event (see [`answers::settle`]).
/// A batch runs again every 30 s of waiting: a record the producer sent
/// more than `epochs.grace` after its timestamp (a loaded machine) can land
/// in an epoch already below the cut, and only the next run counts it (a
/// straggler: delayed, never lost or doubled).
fn settle(p: &Platform, truth: &Truth, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match answers::settle(&p.stack.api, truth, left.min(Duration::from_secs(30))) {
            Ok(_) => return,
            Err(last) if left <= Duration::from_secs(30) => panic!(
                "the platform did not settle within {timeout:?}: {last}; logs in {}",
                p.stack.dir.path().display()
            ),
            Err(_) => p.batch_run(),
        }
    }
}

#[test]
fn the_platform_answers_as_the_fold_through_crashes_late_events_and_batch_runs() {
    let mut p = Platform::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut rng = StdRng::seed_from_u64(2026);
    let mut shape = Shape::default().with_limits(p.stack.cfg.events.limits());
    shape.late_share = 0.05;
    shape.max_late = tally_core::config::Millis(MAX_LATE_MS);
    shape.out_of_order_share = 0.2;
    shape.malformed_share = 0.01;
    shape.check().expect("shape");
    let mut generator = Generator::new(shape, 99).expect("generator");
    let mut truth = Truth::new(&p.stack.cfg);
    let start_ms = now_ms();
    let (mut kills, mut batch_runs) = ((0, 0), 0);
    let mut step = rng.gen_range(0..3usize);

    let kafka_cfg = p.stack.cfg.kafka.clone();
    let mut pf = PfCount::connect(&p.stack.redis.url());
    for phase in 0..PHASES {
        let mut options = ProduceOptions::new(TOPIC, RATE);
        options.count = Some(PHASE_EVENTS);
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let producer = s.spawn(|| {
                answers::produce_folded(&rt, &kafka_cfg, &mut generator, &options, &mut truth);
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            // Chaos while producing: kill a role or run the batch.
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
                // Each kind of chaos in turn, at random moments.
                step += 1;
                match step % 3 {
                    0 => {
                        p.kill_and_restart("speed");
                        kills.0 += 1;
                    }
                    1 => {
                        p.kill_and_restart("archive");
                        kills.1 += 1;
                    }
                    _ => {
                        p.batch_run();
                        batch_runs += 1;
                    }
                }
            }
            producer.join().expect("producer thread");
        });
        if phase + 1 == PHASES {
            // The last settle point follows a batch run over (nearly)
            // everything: once the archive cut has passed the first epoch
            // that holds events (on a loaded machine the archiver, killed
            // several times, may need longer than the phases took).
            let first_full_epoch = start_ms / EPOCH_MS + 1;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let (_, status) = p.get("/api/v1/status");
                let cut = status["archive_cut"].as_i64().unwrap_or(i64::MIN);
                if cut > first_full_epoch || std::time::Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            p.batch_run();
            batch_runs += 1;
        }
        settle(&p, &truth, Duration::from_secs(180));
        let now = now_ms();
        for _ in 0..QUERIES_PER_SETTLE {
            let q = random_query(&mut rng, &truth, start_ms, now, MAX_LATE_MS);
            let (code, body) = p.get(&q.url());
            assert_eq!(code, 200, "{}: {body}", q.url());
            q.compare(&body, &mut pf);
        }
        p.speed.as_mut().expect("speed").assert_running();
        p.archive.as_mut().expect("archive").assert_running();
        p.serve.assert_running();
        eprintln!(
            "phase {phase}: {} accepted, {} rejected; kills speed {} archive {}, batch runs {batch_runs}: {QUERIES_PER_SETTLE} queries exact",
            truth.accepted, truth.rejected, kills.0, kills.1
        );
    }

    // The run exercised what it claims to: late events, rejects, crashes
    // and a snapshot that answers part of the queries.
    let oldest = truth
        .view("daily")
        .cells
        .map
        .keys()
        .map(|(b, _)| *b)
        .min()
        .expect("events");
    assert!(
        oldest < start_ms - 6 * 3_600_000,
        "no event was more than six hours late"
    );
    assert!(truth.rejected > 0, "no malformed records were produced");
    assert!(kills.0 >= 2 && kills.1 >= 2, "too few kills: {kills:?}");
    // Serving adopts a new manifest when it next polls the store, so the
    // last batch run's snapshot may be a poll interval away.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (rows, status) = loop {
        let (_, status) = p.get("/api/v1/status");
        let rows: u64 = status["views"]
            .as_array()
            .expect("views")
            .iter()
            .filter_map(|v| v["snapshot_rows"].as_u64())
            .sum();
        if rows > 0 || std::time::Instant::now() > deadline {
            break (rows, status);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(rows > 0, "no batch snapshot was ever served: {status}");
    // The standalone archiver reports on its own metrics listener.
    let metrics = ureq::get(&format!(
        "http://{}/metrics",
        p.stack
            .cfg
            .archive
            .metrics_listen
            .as_deref()
            .expect("listener")
    ))
    .call()
    .expect("archiver metrics")
    .into_string()
    .expect("text");
    assert!(
        metrics.contains("tally_role_up{role=\"archive\"} 1"),
        "{metrics}"
    );
    p.speed.take().expect("speed").terminate();
    p.archive.take().expect("archive").terminate();
}
