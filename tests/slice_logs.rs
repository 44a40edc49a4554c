//! The serving layer's copy of counters, quantile and distinct sketches,
//! kept by the slices' logs.
//!
//! `tally speed` and `tally serve` run on real Tansu and Redis. Events are
//! produced in rounds, so the serving process follows many flushes by
//! adding what each one added to the quantile sketches, read from the
//! slices' quantile logs (`tally_core::quantile::delta_log`), and by
//! re-reading only the distinct sketches a flush changed, named by the
//! slices' sketch logs (`tally_core::hll::sketch_log`), and by taking the
//! counters' new values from the slices' counter logs
//! (`tally_core::counter_log`), instead of reading every changed cell
//! whole. Once it has settled, its answers
//! must equal, value for value, those of a second `tally serve` started
//! only then, which reads every cell whole, and those of the fold
//! (counts, sums, min, max and distinct counts exactly, quantiles within
//! the promised error). Its metrics must show that it did follow all three
//! logs.

mod answers;
mod role;
mod stack;

use std::time::Duration;

use answers::{random_query, settle, PfCount};
use rand::rngs::StdRng;
use rand::SeedableRng;
use role::Role;
use stack::{Setup, Stack};
use tally_core::time::now_ms;
use tally_gen::{Generator, ProduceOptions, Shape};
use tally_testkit::config::TOPIC;
use tally_testkit::truth::Truth;

const PARTITIONS: i32 = 2;
const ROUNDS: usize = 3;
const ROUND_EVENTS: u64 = 10_000;
const RATE: f64 = 4_000.0;
const MAX_LATE_MS: i64 = 3_600_000;
const QUERIES: usize = 30;

/// Every percentile the comparisons ask for.
const EVERY_TENTH: &str = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.99,1";

#[test]
fn cells_followed_through_the_logs_equal_cells_read_whole_and_the_fold() {
    let stack = Stack::start(
        "slice-logs",
        stack::dir("slice-logs"),
        PARTITIONS,
        Setup::default(),
    );
    let cfg = stack.cfg.clone();
    let env = [("TALLY_KAFKA__ASSIGNMENT", "all")];
    let _speed = Role::start(&["speed"], &stack.config, &stack.log("speed"), &env);
    let mut serve = Role::start(&["serve"], &stack.config, &stack.log("serve"), &env);

    let mut shape = Shape::default().with_limits(cfg.events.limits());
    shape.late_share = 0.05;
    shape.max_late = tally_core::config::Millis(MAX_LATE_MS);
    shape.out_of_order_share = 0.2;
    shape.check().expect("shape");
    let mut generator = Generator::new(shape, 41).expect("generator");
    let mut truth = Truth::new(&cfg);
    let started_ms = now_ms();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for round in 0..ROUNDS {
        let mut options = ProduceOptions::new(TOPIC, RATE);
        options.count = Some(ROUND_EVENTS);
        answers::produce_folded(&rt, &cfg.kafka, &mut generator, &options, &mut truth);
        if let Err(last) = settle(&stack.api, &truth, Duration::from_secs(120)) {
            panic!("round {round}: the API does not count every event: {last}");
        }
    }

    // A second server, started now: it reads every cell whole.
    let port = tally_testkit::free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    let fresh_api = format!("http://{listen}");
    let env_fresh = [("TALLY_SERVE__LISTEN", listen.as_str())];
    let mut fresh = Role::start(
        &["serve"],
        &stack.config,
        &stack.log("serve-fresh"),
        &env_fresh,
    );
    let up = std::time::Instant::now();
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "the second server does not listen on {listen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Err(last) = settle(&fresh_api, &truth, Duration::from_secs(60)) {
        panic!("the second server does not count every event: {last}");
    }

    // Whole days: a bucket counts when it starts in the range.
    let day = 86_400_000;
    let from = (started_ms - MAX_LATE_MS).div_euclid(day) * day;
    let to = from + 2 * day;
    let mut compared = 0;
    for view in &cfg.views {
        let measures: Vec<&str> = view.measures.iter().map(|m| m.name.as_str()).collect();
        let dims: Vec<String> = view.dimensions.iter().map(|d| d.as_string()).collect();
        let url = format!(
            "/api/v1/views/{}/query?from={from}&to={to}&granularity={}ms&group_by={}&measures={}&quantiles={EVERY_TENTH}",
            view.name,
            view.granularity.as_ms(),
            dims.join(","),
            measures.join(","),
        );
        let (code_a, a) = answers::get(&stack.api, &url);
        let (code_b, b) = answers::get(&fresh_api, &url);
        assert_eq!((code_a, code_b), (200, 200), "{url}: {a} / {b}");
        let series = a["series"].as_array().map_or(0, |s| s.len());
        assert!(series > 0, "{url}: no series in {a}");
        assert_eq!(
            a["series"], b["series"],
            "{url}: the copy kept by the logs differs from cells read whole"
        );
        compared += series;
    }

    // Both within the promised error of the fold.
    let mut rng = StdRng::seed_from_u64(41);
    let mut pf = PfCount::connect(&stack.redis.url());
    let now = now_ms();
    for _ in 0..QUERIES {
        let q = random_query(&mut rng, &truth, started_ms, now, MAX_LATE_MS);
        for api in [&stack.api, &fresh_api] {
            let (code, body) = answers::get(api, &q.url());
            assert_eq!(code, 200, "{}: {body}", q.url());
            q.compare(&body, &mut pf);
        }
    }

    let metrics = ureq::get(&format!("{}/metrics", stack.api))
        .call()
        .expect("metrics")
        .into_string()
        .expect("metrics text");
    let from_log = metric(
        &metrics,
        r#"tally_serving_speed_quantile_reads_total{from="log"}"#,
    );
    assert!(
        from_log > 0.0,
        "the first server never read its quantiles from the log:\n{metrics}"
    );
    let sketches_from_log = metric(
        &metrics,
        r#"tally_serving_speed_sketch_reads_total{from="log"}"#,
    );
    assert!(
        sketches_from_log > 0.0,
        "the first server never followed the sketch log:\n{metrics}"
    );
    let counters_from_log = metric(
        &metrics,
        r#"tally_serving_speed_counter_reads_total{from="log"}"#,
    );
    assert!(
        counters_from_log > 0.0,
        "the first server never followed the counter log:\n{metrics}"
    );
    serve.assert_running();
    fresh.assert_running();
    eprintln!(
        "{} accepted; {compared} series equal between the log-kept copy and whole reads; slice reads from the logs: {from_log} quantile, {sketches_from_log} distinct, {counters_from_log} counters",
        truth.accepted
    );
}

/// The value of one Prometheus sample (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
