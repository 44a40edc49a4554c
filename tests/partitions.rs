//! Scale-out without a group coordinator: `kafka.assignment = "partitions"`.
//!
//! An 8-partition topic on real Tansu is split by explicit partition lists
//! between two `tally speed` processes and two `tally archive` processes,
//! plus a third speed process whose list overlaps both halves (offset
//! fencing must keep the counters exact). Mid-stream one speed process and
//! one archiver are SIGKILLed and started again. After `tally batch run`,
//! the API (`tally serve`) must count every accepted event and answer random
//! queries as the plain fold over what was produced, with the snapshot built
//! from the two archivers' files answering the older epochs.

mod answers;
mod role;
mod stack;

use std::path::Path;
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

const PARTITIONS: i32 = 8;
const EVENTS: u64 = 40_000;
const RATE: f64 = 10_000.0;
const MAX_LATE_MS: i64 = 6 * 3_600_000;
const QUERIES: usize = 30;

/// The partition lists, as `TALLY_KAFKA__…` overrides of one config.
fn listed(partitions: &str) -> [(&'static str, String); 2] {
    [
        ("TALLY_KAFKA__ASSIGNMENT", "partitions".to_owned()),
        ("TALLY_KAFKA__PARTITIONS", partitions.to_owned()),
    ]
}

fn start(name: &str, role: &str, partitions: &str, config: &Path, dir: &Path) -> Role {
    let env = listed(partitions);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Role::start(&[role], config, &dir.join(format!("{name}.log")), &env)
}

#[test]
fn two_speed_processes_and_two_archivers_split_a_topic_by_listed_partitions_exactly() {
    let stack = Stack::start(
        "partitions",
        stack::dir("partitions"),
        PARTITIONS,
        Setup::default(),
    );
    let (config, cfg) = (stack.config.clone(), stack.cfg.clone());
    let d = stack.dir.path();
    let mut speed_a = start("speed-a", "speed", "[0, 1, 2, 3]", &config, d);
    let mut speed_b = Some(start("speed-b", "speed", "[4, 5, 6, 7]", &config, d));
    let mut speed_c = start("speed-c", "speed", "[3, 4]", &config, d);
    let mut archive_a = Some(start("archive-a", "archive", "[0, 1, 2, 3]", &config, d));
    let mut archive_b = start("archive-b", "archive", "[4, 5, 6, 7]", &config, d);
    let mut serve = Role::start(&["serve"], &config, &d.join("serve.log"), &[]);

    let mut generator = generator(&cfg, 16);
    let mut truth = Truth::new(&cfg);
    let started_ms = now_ms();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for half in 0..2 {
        produce_half(&rt, &cfg, &mut generator, &mut truth);
        if half == 0 {
            // One speed process and one archiver die mid-stream and come back.
            speed_b.take().expect("speed-b").kill9();
            archive_a.take().expect("archive-a").kill9();
            speed_b = Some(start("speed-b", "speed", "[4, 5, 6, 7]", &config, d));
            archive_a = Some(start("archive-a", "archive", "[0, 1, 2, 3]", &config, d));
        }
    }

    counts_then_answers_exactly(&stack, &truth, started_ms, 8);
    // Together the archivers wrote every partition; each process took only
    // the partitions it lists.
    let archived = archived_partitions(&stack.store_dir());
    assert_eq!(archived, (0..PARTITIONS).collect::<Vec<_>>());
    for (name, want) in [
        ("speed-a", vec![0, 1, 2, 3]),
        ("speed-b", vec![4, 5, 6, 7]),
        ("speed-c", vec![3, 4]),
        ("archive-a", vec![0, 1, 2, 3]),
        ("archive-b", vec![4, 5, 6, 7]),
    ] {
        assert_eq!(assigned(&d.join(format!("{name}.log"))), want, "{name}");
    }

    for r in [&mut speed_a, &mut speed_c, &mut archive_b, &mut serve] {
        r.assert_running();
    }
    speed_b.as_mut().expect("speed-b").assert_running();
    archive_a.as_mut().expect("archive-a").assert_running();
    eprintln!(
        "{} accepted, {} rejected; {QUERIES} queries exact with 3 speed processes and 2 archivers on listed partitions",
        truth.accepted, truth.rejected
    );
}

/// Issue 16, item 3: the same split on a Redis Cluster of 3 masters with a
/// replica each (8 partitions in 16 partition groups). Mid-stream a speed
/// process and an archiver are SIGKILLed and restarted, and the master
/// serving partition 0's group is SIGKILLed: its replica is promoted. Once
/// it settles the API counts every accepted event exactly and random
/// queries answer as the fold: nothing lost, nothing doubled. (A promoted
/// replica that missed the last writes holds an older but consistent state
/// of its groups, offsets with counters, since Redis replicates a script's
/// writes as one transaction; the speed layer's next call there is fenced
/// and replays from the stored offset.)
#[test]
fn on_a_redis_cluster_with_a_master_failover_the_split_stays_exact() {
    let setup = Setup {
        redis_cluster: Some((3, 1, 16)),
        ..Setup::default()
    };
    let mut stack = Stack::start(
        "partitions-cluster",
        stack::dir("partitions-cluster"),
        PARTITIONS,
        setup,
    );
    let (config, cfg) = (stack.config.clone(), stack.cfg.clone());
    let d = stack.dir.path().to_path_buf();
    let d = d.as_path();
    let _speed_a = start("speed-a", "speed", "[0, 1, 2, 3]", &config, d);
    let mut speed_b = Some(start("speed-b", "speed", "[4, 5, 6, 7]", &config, d));
    let mut archive_a = Some(start("archive-a", "archive", "[0, 1, 2, 3]", &config, d));
    let _archive_b = start("archive-b", "archive", "[4, 5, 6, 7]", &config, d);
    let _serve = Role::start(&["serve"], &config, &d.join("serve.log"), &[]);

    let mut generator = generator(&cfg, 17);
    let mut truth = Truth::new(&cfg);
    let started_ms = now_ms();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let failover_key = cfg.redis.layout().keys_of(0).offsets();
    for half in 0..2 {
        produce_half(&rt, &cfg, &mut generator, &mut truth);
        if half == 0 {
            speed_b.take().expect("speed-b").kill9();
            archive_a.take().expect("archive-a").kill9();
            let cluster = stack.cluster.as_mut().expect("cluster");
            let master = cluster
                .kill_master_of(&failover_key)
                .expect("kill a master");
            speed_b = Some(start("speed-b", "speed", "[4, 5, 6, 7]", &config, d));
            archive_a = Some(start("archive-a", "archive", "[0, 1, 2, 3]", &config, d));
            cluster
                .wait_promoted(master, Duration::from_secs(30))
                .expect("a replica takes over");
        }
    }
    counts_then_answers_exactly(&stack, &truth, started_ms, 9);
    for log in ["speed-a", "speed-b"] {
        let text = std::fs::read_to_string(d.join(format!("{log}.log"))).unwrap_or_default();
        assert!(
            !text.contains("lost part of the speed layer's state"),
            "{log} reported a partial loss"
        );
    }
    speed_b.as_mut().expect("speed-b").assert_running();
    archive_a.as_mut().expect("archive-a").assert_running();
    eprintln!(
        "{} accepted, {} rejected; {QUERIES} queries exact on a Redis Cluster after a master failover",
        truth.accepted, truth.rejected
    );
}

/// The generator both tests produce with: late, out-of-order and
/// malformed events among the rest.
fn generator(cfg: &tally_core::config::Config, seed: u64) -> Generator {
    let mut shape = Shape::default().with_limits(cfg.events.limits());
    shape.late_share = 0.05;
    shape.max_late = tally_core::config::Millis(MAX_LATE_MS);
    shape.out_of_order_share = 0.2;
    shape.malformed_share = 0.01;
    shape.check().expect("shape");
    Generator::new(shape, seed).expect("generator")
}

/// Produce half of the events, folding each into `truth`.
fn produce_half(
    rt: &tokio::runtime::Runtime,
    cfg: &tally_core::config::Config,
    generator: &mut Generator,
    truth: &mut Truth,
) {
    let mut options = ProduceOptions::new(TOPIC, RATE);
    options.count = Some(EVENTS / 2);
    answers::produce_folded(rt, &cfg.kafka, generator, &options, truth);
}

/// The API counts every event the fold accepted, from the speed layer.
/// Then batch runs until serving adopts a snapshot and the API counts
/// every event again, and random queries (seeded by `seed`) answer as the
/// fold. More than one run may be needed: a record the producer sent more
/// than `epochs.grace` after its timestamp (a loaded machine) can land in
/// an epoch already below the cut, and only the next run counts it (a
/// straggler: delayed, never lost or doubled).
fn counts_then_answers_exactly(stack: &Stack, truth: &Truth, started_ms: i64, seed: u64) {
    let api = &stack.api;
    if let Err(last) = settle(api, truth, Duration::from_secs(120)) {
        panic!("the speed processes did not count every event: {last}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let mut runs = 0;
    loop {
        stack.batch_run();
        runs += 1;
        std::thread::sleep(Duration::from_secs(3));
        let (_, status) = answers::get(api, "/api/v1/status");
        let rows: u64 = status["views"]
            .as_array()
            .expect("views")
            .iter()
            .filter_map(|v| v["snapshot_rows"].as_u64())
            .sum();
        let last = match settle(api, truth, Duration::from_secs(10)) {
            Ok(_) if rows > 0 => break,
            Ok(_) => format!("no snapshot was served: {status}"),
            Err(last) => last,
        };
        assert!(
            std::time::Instant::now() < deadline,
            "after {runs} batch runs the API does not count every event: {last}"
        );
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pf = PfCount::connect(&stack.redis.url());
    let now = now_ms();
    for _ in 0..QUERIES {
        let q = random_query(&mut rng, truth, started_ms, now, MAX_LATE_MS);
        let (code, body) = answers::get(api, &q.url());
        assert_eq!(code, 200, "{}: {body}", q.url());
        q.compare(&body, &mut pf);
    }
}

/// The partitions that have archive files (`…/p=NNNN/…` in the store).
fn archived_partitions(store: &Path) -> Vec<i32> {
    let mut found = std::collections::BTreeSet::new();
    let mut stack = vec![store.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(p) = name.strip_prefix("p=").and_then(|p| p.parse().ok()) {
                found.insert(p);
            }
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    found.into_iter().collect()
}

/// The partitions a role's log says it was assigned.
fn assigned(log: &Path) -> Vec<i32> {
    let text = std::fs::read_to_string(log).expect("read the role's log");
    let mut found = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| l.contains("partition assigned")) {
        // Without the colour codes: `... partition assigned topic=events partition=3 ...`.
        let plain: String = line
            .split('\u{1b}')
            .map(|p| p.split_once('m').map_or(p, |(_, r)| r))
            .collect();
        if let Some(p) = plain
            .split_whitespace()
            .find_map(|w| w.strip_prefix("partition="))
            .and_then(|p| p.parse().ok())
        {
            found.insert(p);
        }
    }
    found.into_iter().collect()
}
