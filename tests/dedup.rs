//! `dedup = "event_id"` through the whole platform: producer retries (10 %
//! of records re-send one of the last 1,000 events) on a real broker, with
//! `tally speed`, `tally serve` and later `tally archive` and `tally batch
//! run` as processes, against the truth's own fold with dedup.
//!
//! - Retries inside the speed layer's window: the speed-only answer of the
//!   dedup view equals the fold, and says `speed_may_hold_duplicates`.
//! - A window too small (`speed.dedup_window = 5`): the speed answer counts
//!   retries twice and says so; once the batch covers those epochs the answer
//!   equals the fold exactly and the flag is off.

mod answers;
mod role;
mod stack;

use std::time::{Duration, Instant};

use answers::{random_query, PfCount};
use rand::rngs::StdRng;
use rand::SeedableRng;
use role::Role;
use stack::{Setup, Stack};
use tally_core::time::now_ms;
use tally_gen::{Generator, ProduceOptions, Shape};
use tally_testkit::config::{DEDUP_VIEW, TOPIC};
use tally_testkit::truth::Truth;

const EVENTS: u64 = 20_000;
const RATE: f64 = 10_000.0;
const MAX_LATE_MS: i64 = 86_400_000;
const EPOCH_MS: i64 = 10_000;
const QUERIES: usize = 25;

/// Produce `EVENTS` records of `generator` with retries, folding each into
/// `truth`.
fn produce_phase(stack: &Stack, generator: &mut Generator, truth: &mut Truth) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut options = ProduceOptions::new(TOPIC, RATE);
    options.count = Some(EVENTS);
    answers::produce_folded(&rt, &stack.cfg.kafka, generator, &options, truth);
}

/// The whole-range answer of the dedup view: (total events, the flag).
fn once_total(stack: &Stack, start_ms: i64) -> (u64, bool, serde_json::Value) {
    let (from, to) = (start_ms - 2 * MAX_LATE_MS, now_ms() + 3_600_000);
    let (code, body) = answers::get(
        &stack.api,
        &format!("/api/v1/views/once/query?from={from}&to={to}&granularity=1d&measures=events"),
    );
    assert_eq!(code, 200, "{body}");
    let total = body["totals"]["events"].as_u64().expect("total");
    let flag = body["speed_may_hold_duplicates"]
        .as_bool()
        .expect("speed_may_hold_duplicates");
    (total, flag, body)
}

/// [`once_total`] once it equals `want`, or as it is after `wait`: a
/// sync of the speed copy reads the views one after another, so a flush can
/// show in one view a sync before another.
fn once_total_reaching(
    stack: &Stack,
    start_ms: i64,
    want: u64,
    wait: Duration,
) -> (u64, bool, serde_json::Value) {
    let deadline = Instant::now() + wait;
    loop {
        let answer = once_total(stack, start_ms);
        if answer.0 == want || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn truth_total(truth: &Truth, view: &str, measure: &str) -> u64 {
    let v = truth.view(view);
    v.cells
        .map
        .values()
        .map(|c| c[v.measure(measure)].count)
        .sum()
}

/// Random queries of the dedup view, each equal to the fold.
fn queries_match(stack: &Stack, truth: &Truth, start_ms: i64, seed: u64) {
    let mut once = truth.clone();
    once.views.retain(|v| v.name == "once");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pf = PfCount::connect(&stack.redis.url());
    for _ in 0..QUERIES {
        let q = random_query(&mut rng, &once, start_ms, now_ms(), MAX_LATE_MS);
        let (code, body) = answers::get(&stack.api, &q.url());
        assert_eq!(code, 200, "{}: {body}", q.url());
        q.compare(&body, &mut pf);
    }
}

#[test]
fn retries_are_counted_once_by_speed_within_its_window_and_by_the_batch() {
    let setup = Setup {
        extra: DEDUP_VIEW.into(),
        ..Setup::default()
    };
    let stack = Stack::start("dedup", stack::dir("dedup"), 2, setup);
    let env = [("TALLY_KAFKA__ASSIGNMENT", "all")];
    let serve = Role::start(&["serve"], &stack.config, &stack.log("serve"), &env);
    let speed = Role::start(&["speed"], &stack.config, &stack.log("speed"), &env);
    let mut shape = Shape::default().with_limits(stack.cfg.events.limits());
    shape.late_share = 0.05;
    shape.max_late = tally_core::config::Millis(MAX_LATE_MS);
    shape.malformed_share = 0.0;
    shape.retry_share = 0.1;
    shape.retry_span = 1000;
    shape.check().expect("shape");
    let mut generator = Generator::new(shape, 18).expect("generator");
    let mut truth = Truth::new(&stack.cfg);
    let start_ms = now_ms();

    // Phase 1: every retry is within the window.
    produce_phase(&stack, &mut generator, &mut truth);
    let settled = answers::settle(&stack.api, &truth, Duration::from_secs(120));
    settled.unwrap_or_else(|e| panic!("not settled: {e}; logs in {:?}", stack.dir.path()));
    let want = truth_total(&truth, "once", "events");
    assert!(
        want + 1000 < truth_total(&truth, "daily", "events"),
        "retries were produced"
    );
    // `daily` settled; the dedup view's answer follows within a refresh.
    let (got, flag, body) = once_total_reaching(&stack, start_ms, want, Duration::from_secs(30));
    assert_eq!(got, want, "speed-only, retries in the window: {body}");
    assert!(
        flag,
        "a speed answer of a dedup view says it may hold duplicates"
    );
    queries_match(&stack, &truth, start_ms, 1);

    // Phase 2: a window of 5 ids, far fewer than the retries reach back.
    speed.terminate();
    let small = [
        ("TALLY_KAFKA__ASSIGNMENT", "all"),
        ("TALLY_SPEED__DEDUP_WINDOW", "5"),
    ];
    let speed = Role::start(&["speed"], &stack.config, &stack.log("speed"), &small);
    produce_phase(&stack, &mut generator, &mut truth);
    let settled = answers::settle(&stack.api, &truth, Duration::from_secs(120));
    settled.unwrap_or_else(|e| panic!("not settled: {e}; logs in {:?}", stack.dir.path()));
    let want = truth_total(&truth, "once", "events");
    let (got, flag, body) = once_total(&stack, start_ms);
    assert!(
        got > want,
        "the small window lets retries through: {got} vs {want}"
    );
    assert!(flag, "{body}");

    // The batch covers every epoch: exact, and the flag is off.
    let archive = Role::start(&["archive"], &stack.config, &stack.log("archive"), &env);
    let last_epoch = now_ms() / EPOCH_MS;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, status) = answers::get(&stack.api, "/api/v1/status");
        if status["archive_cut"].as_i64().unwrap_or(i64::MIN) > last_epoch {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the archive cut did not pass {last_epoch}: {status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    stack.batch_run();
    let (got, flag, body) = once_total_reaching(&stack, start_ms, want, Duration::from_secs(60));
    assert_eq!(got, want, "after the batch run: {body}");
    assert!(!flag, "no speed slice above the cut: {body}");
    queries_match(&stack, &truth, start_ms, 2);
    speed.terminate();
    archive.terminate();
    serve.terminate();
}
