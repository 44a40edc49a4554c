//! Decode cost without a benchmark harness, for `perf stat -e instructions:u`
//! on a loaded machine (instruction counts do not depend on the load; times
//! do): decodes records shaped like the drain benchmark's `N` times through
//! `decode` (fast path first) or the general serde_json path alone.
//!
//! Usage: decode_cost (fast|general) [N]

use std::hint::black_box;
use std::time::Instant;

use tally_core::event::{decode, decode_general, Limits};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let general = match args.get(1).map(String::as_str) {
        Some("fast") => false,
        Some("general") => true,
        _ => {
            eprintln!("usage: decode_cost (fast|general) [N]");
            std::process::exit(2);
        }
    };
    let n: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_000_000);
    // As tally-gen writes them: epoch-ms and RFC 3339 timestamps, a float.
    let records: [&[u8]; 2] = [
        br#"{"event_id":"e1-123456","event_type":"page_view","timestamp":1767225600123,"user_id":"u4711","properties":{"page":"/p12","country":"us","mobile":true,"duration":431,"scroll":35.75}}"#,
        br#"{"event_id":"e1-123457","event_type":"click","timestamp":"2026-01-01T00:00:00.456Z","user_id":"u815","properties":{"page":"/p3","country":"de","duration":12}}"#,
    ];
    let limits = Limits::default();
    let kts = 1_767_225_600_000;
    let start = Instant::now();
    let mut ok = 0u64;
    for i in 0..n {
        let rec = black_box(records[(i & 1) as usize]);
        let valid = if general {
            std::str::from_utf8(rec)
                .ok()
                .is_some_and(|t| decode_general(t, kts, &limits).is_ok())
        } else {
            decode(rec, kts, &limits).is_ok()
        };
        ok += u64::from(valid);
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "{} {n} decodes, {ok} valid, {ns:.0} ns/event",
        if general { "general" } else { "fast" }
    );
}
