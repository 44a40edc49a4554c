//! ns/event for decoding and validating a 200-byte event (the hot path of both
//! layers), next to the general serde_json path `decode` falls back to and to
//! a plain `serde_json::Value` parse of the same bytes (the peer).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tally_core::event::{decode, decode_general, Limits};

fn decode_200_bytes(c: &mut Criterion) {
    let rec = br#"{"event_id":"evt_0123456789","event_type":"page_view","timestamp":"2024-01-01T00:00:00.123Z","user_id":"user_456789","properties":{"page":"/products/shoes","duration":30,"ref":"search","mobile":true}}"#;
    assert!(
        (190..=210).contains(&rec.len()),
        "benchmark input is {} bytes",
        rec.len()
    );
    let limits = Limits::default();
    let kts = 1_704_067_200_000;
    let millis = br#"{"event_id":"evt_0123456789","event_type":"page_view","timestamp":1704067200123,"user_id":"user_456789","properties":{"page":"/products/shoes","duration":30,"ref":"search","x":1,"mobile":true}}"#;
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    for (name, input) in [("rfc3339_200B", &rec[..]), ("epoch_ms_200B", &millis[..])] {
        g.bench_function(name, |b| {
            b.iter(|| decode(black_box(input), kts, &limits).expect("valid"))
        });
        g.bench_function(format!("{name}/general_serde_path"), |b| {
            b.iter(|| {
                let text = std::str::from_utf8(black_box(input)).expect("utf8");
                decode_general(text, kts, &limits).expect("valid")
            })
        });
        g.bench_function(format!("{name}/peer_serde_json_value"), |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(input)).expect("json"))
        });
    }
    g.finish();
}

criterion_group!(benches, decode_200_bytes);
criterion_main!(benches);
