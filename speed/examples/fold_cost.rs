//! The consume thread's work per event (decode, then fold a few records
//! later, as the consume loop does) with views that have `dedup =
//! "event_id"` against the same views without, alternating in the same
//! process: the part of the speed drain that dedup changes, without the
//! broker and Redis (whose cost dedup does not change).
//!
//! Events as the drain benchmark produces them (`benches/speed_drain.rs`:
//! 50 pages, 100,000 users, event times within 5 s of their Kafka time over
//! one hour); its two views; a chunk cut every 100,000 events, as flushes do.
//!
//! Usage: fold_cost [N (default 2,000,000)] [ROUNDS (default 5)] [WINDOW
//! (`speed.dedup_window`, default 1,000,000)]

use std::time::Instant;

use tally_core::event::{decode, Limits};
use tally_core::time::EpochGrid;
use tally_core::view::ViewDef;
use tally_speed::delta::{At, Folder, Unflushed, LOOK_AHEAD};
use tally_testkit::gen::{Generator, Shape};

/// The drain benchmark's two views.
const VIEWS: &str = r#"[
  {"name": "page_views", "filter": {"event_type": ["page_view"]},
   "dimensions": ["properties.page"], "granularity": "1m",
   "measures": [
     {"name": "views", "agg": "count"},
     {"name": "duration", "agg": "sum", "field": "properties.duration"},
     {"name": "longest", "agg": "max", "field": "properties.duration"},
     {"name": "users", "agg": "distinct", "field": "user_id"}]},
  {"name": "by_type", "dimensions": ["event_type"], "granularity": "1m",
   "measures": [{"name": "events", "agg": "count"}]}
]"#;

fn views(dedup: bool) -> Vec<ViewDef> {
    let mut v: Vec<ViewDef> = serde_json::from_str(VIEWS).expect("views");
    if dedup {
        for d in &mut v {
            d.dedup = Some("event_id".into());
        }
    }
    v
}

/// ns per event of decoding and folding `records` once.
fn run(records: &[(Vec<u8>, i64)], dedup: bool, window: usize) -> f64 {
    let mut folder = Folder::new(views(dedup), EpochGrid::new(3_600_000)).with_dedup_window(window);
    let mut delta = Unflushed::default();
    let limits = Limits::default();
    let start = Instant::now();
    let mut ahead = Vec::with_capacity(LOOK_AHEAD);
    for (i, (payload, kts)) in records.iter().enumerate() {
        if let Ok(event) = decode(payload, *kts, &limits) {
            let at = At {
                topic: "events",
                partition: (i % 4) as i32,
                offset: i as i64,
                kafka_ts_ms: *kts,
            };
            let key = folder.look_ahead(&at, &event);
            ahead.push((at, event, key));
        }
        if ahead.len() == LOOK_AHEAD || i % 100_000 == 99_999 {
            for (at, event, key) in ahead.drain(..) {
                folder.fold_ahead(&mut delta, 0, at, &event, key);
            }
        }
        if i % 100_000 == 99_999 {
            std::hint::black_box(delta.take());
        }
    }
    for (at, event, key) in ahead.drain(..) {
        folder.fold_ahead(&mut delta, 0, at, &event, key);
    }
    std::hint::black_box(delta.take());
    start.elapsed().as_nanos() as f64 / records.len() as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let window: usize = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let shape = Shape::drain();
    let mut generator = Generator::new(shape, 1).expect("shape");
    let base = 1_767_225_600_000i64;
    let records: Vec<(Vec<u8>, i64)> = (0..n)
        .map(|i| {
            let ts = base + (i as i64 * 3_600_000 / n as i64);
            (generator.next(ts).payload, ts)
        })
        .collect();
    let (mut plain, mut dedup) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which runs first.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for d in order {
            let ns = run(&records, d, window);
            eprintln!("round {round}: dedup={d}: {ns:.0} ns/event");
            if d {
                dedup.push(ns)
            } else {
                plain.push(ns)
            }
        }
    }
    let (p, d) = (median(plain), median(dedup));
    println!("{n} events, window {window}, median of {rounds}: plain {p:.0} ns/event, dedup {d:.0} ns/event");
    println!(
        "ratio plain / dedup (throughput dedup / plain) = {:.3}",
        p / d
    );
}
