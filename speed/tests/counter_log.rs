//! The counter log (`tally_core::counter_log`) as the apply script writes
//! it: for each counter field a flush wrote, the value Redis then held, as
//! Redis writes it, or unknown (`?`) where Lua cannot write it exactly
//! (an integer past 2^53), or unchanged (`=`: a min or max the flush did
//! not move). Checked against Redis's own counters after the
//! last flush: each field's last logged value is the value it holds.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use redis::Commands;
use tally_core::keys::Keys;
use tally_testkit::{kafka, runtime};

/// 2^53: below it Lua holds every integer exactly.
const EXACT_BELOW: i128 = 1 << 53;

#[test]
fn each_fields_last_logged_value_is_what_redis_holds() {
    let (broker, redis) = services(2);
    let t0 = base_ms();
    // Sums past 2^53 (and one past 2^63, through the carry), among
    // ordinary traffic over every aggregate.
    let mut evs = vec![
        amount_event("big1", "up", "6000000000000000000", t0),
        amount_event("big2", "up", "6000000000000000000", t0 + 1000),
        amount_event("small", "side", "12.5", t0 + 1500),
    ];
    evs.extend(events(12, 2_000, 2, t0 + 3_000, 10.0));
    let producer = kafka::producer(&broker.bootstrap(), 100).expect("producer");
    let recs = records(&evs, 0);
    kafka::produce(&producer, TOPIC, &recs).expect("produce");
    let rt = runtime();
    let cfg = config(&broker.bootstrap(), &redis.url(), "counter-log");
    run_until_counted(&rt, &cfg, &recs, 2, &evs, Duration::from_secs(120));

    let mut con = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("redis");
    let keys = Keys::new("t");
    let (mut checked, mut unknown) = (0, 0);
    for view in cfg.views.iter().filter(|v| v.has_counters()) {
        let members: Vec<String> = con.zrange(keys.slices(&view.name), 0, -1).expect("slices");
        for m in members {
            let (e, d) = Keys::parse_slice_member(&m).expect("a slice member");
            let held: HashMap<String, String> = con
                .hgetall(keys.counters(&view.name, e, d))
                .expect("counters");
            let entries: Vec<(String, f64)> = con
                .zrange_withscores(keys.counter_log(&view.name, e, d), 0, -1)
                .expect("counter log");
            assert!(
                entries.len() < 64,
                "{m}: the log was trimmed; the test needs fewer flushes"
            );
            // Read by hand: `{prev}\n`, the values separated by tabs, then
            // one line per field; `=` for a min or max left as it was.
            let mut logged: HashMap<&str, &str> = HashMap::new();
            for (entry, _) in &entries {
                let mut lines = entry.split('\n').skip(1);
                let values = lines.next().expect("a line of values");
                let fields: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
                let values: Vec<&str> = values.split('\t').filter(|v| !v.is_empty()).collect();
                assert_eq!(values.len(), fields.len(), "{m}: {entry:?}");
                for (field, value) in fields.into_iter().zip(values) {
                    if value != "=" {
                        logged.insert(field, value);
                    }
                }
            }
            for (field, value) in &held {
                let last = logged
                    .get(field.as_str())
                    .unwrap_or_else(|| panic!("{m}: {field} was written but never logged"));
                if *last == "?" {
                    let v: i128 = value.parse().expect("an integer");
                    assert!(
                        v.abs() >= EXACT_BELOW,
                        "{m}: {field} = {value} logged as unknown"
                    );
                    unknown += 1;
                } else {
                    assert_eq!(last, value, "{m}: {field}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 1_000, "only {checked} fields checked");
    assert!(unknown > 0, "no sum past 2^53 was logged as unknown");
}
