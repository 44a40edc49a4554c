//! ns/event for decoding and validating a 200-byte event (the hot path of both layers).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tally_core::event::{decode, Limits};

fn decode_200_bytes(c: &mut Criterion) {
    let rec = br#"{"event_id":"evt_0123456789","event_type":"page_view","timestamp":"2024-01-01T00:00:00.123Z","user_id":"user_456789","properties":{"page":"/products/shoes","duration":30,"ref":"search","mobile":true}}"#;
    assert!(
        (190..=210).contains(&rec.len()),
        "benchmark input is {} bytes",
        rec.len()
    );
    let limits = Limits::default();
    let kts = 1_704_067_200_000;
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rfc3339_200B", |b| {
        b.iter(|| decode(black_box(rec), kts, &limits).expect("valid"))
    });
    let millis = br#"{"event_id":"evt_0123456789","event_type":"page_view","timestamp":1704067200123,"user_id":"user_456789","properties":{"page":"/products/shoes","duration":30,"ref":"search","x":1,"mobile":true}}"#;
    g.bench_function("epoch_ms_200B", |b| {
        b.iter(|| decode(black_box(millis), kts, &limits).expect("valid"))
    });
    g.finish();
}

criterion_group!(benches, decode_200_bytes);
criterion_main!(benches);
