//! The HyperLogLog here against a real Redis: same registers as `PFADD`, same
//! estimate as `PFCOUNT`, and sketches from either side merge.

use redis::Commands;
use tally_core::hll::Hll;
use tally_testkit::Redis;

fn values(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|i| format!("user_{i}")).collect()
}

fn pfadd_all(con: &mut redis::Connection, key: &str, vals: &[String]) {
    for chunk in vals.chunks(10_000) {
        let _: () = redis::cmd("PFADD")
            .arg(key)
            .arg(chunk)
            .query(con)
            .expect("PFADD");
    }
}

fn sketch(vals: &[String]) -> Hll {
    let mut h = Hll::new();
    for v in vals {
        h.add(v.as_bytes());
    }
    h
}

#[test]
fn registers_and_estimates_equal_redis_from_1e3_to_1e6() {
    let server = Redis::start().expect("redis");
    let mut con = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    for n in [1_000u64, 10_000, 100_000, 1_000_000] {
        let vals = values(0..n);
        let key = format!("pf:{n}");
        pfadd_all(&mut con, &key, &vals);
        let ours = sketch(&vals);

        // What Redis stored decodes to exactly our registers (sparse for small n, dense for large).
        let stored: Vec<u8> = con.get(&key).unwrap();
        let theirs = Hll::from_redis_bytes(&stored).expect("decode redis bytes");
        assert_eq!(theirs.registers(), ours.registers(), "n={n}");

        // Same estimate as PFCOUNT, and within 2 % of the truth.
        let pfcount: u64 = redis::cmd("PFCOUNT").arg(&key).query(&mut con).unwrap();
        assert_eq!(ours.count(), pfcount, "n={n}");
        let err = (pfcount as f64 - n as f64).abs() / n as f64;
        assert!(err < 0.02, "n={n} estimate={pfcount} error={err}");

        // The bytes we build are a valid Redis HLL whose PFCOUNT is our estimate.
        let built = format!("built:{n}");
        let _: () = con.set(&built, ours.to_redis_bytes()).unwrap();
        let recount: u64 = redis::cmd("PFCOUNT").arg(&built).query(&mut con).unwrap();
        assert_eq!(recount, ours.count(), "n={n}");
        // Dense bytes built here equal Redis's own dense bytes past the header.
        if stored[4] == 0 {
            assert_eq!(
                &ours.to_redis_dense()[16..],
                &stored[16..],
                "dense body n={n}"
            );
        }
    }
}

#[test]
fn a_redis_sketch_merges_with_one_built_here() {
    let server = Redis::start().expect("redis");
    let mut con = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    for (a, b) in [(0..500u64, 300..2_000u64), (0..60_000, 20_000..150_000)] {
        let left = values(a.clone());
        let right = values(b.clone());
        let _: () = redis::cmd("DEL")
            .arg("left")
            .arg("right")
            .query(&mut con)
            .unwrap();
        pfadd_all(&mut con, "left", &left);
        let _: () = con.set("right", sketch(&right).to_redis_bytes()).unwrap();

        let stored: Vec<u8> = con.get("left").unwrap();
        let mut merged = Hll::from_redis_bytes(&stored).unwrap();
        merged.merge(&sketch(&right));

        let both: u64 = redis::cmd("PFCOUNT")
            .arg("left")
            .arg("right")
            .query(&mut con)
            .unwrap();
        assert_eq!(merged.count(), both, "{a:?} + {b:?}");
        let exact = (a.start.min(b.start)..a.end.max(b.end)).count() as f64;
        assert!((both as f64 - exact).abs() / exact < 0.02);
    }
}

#[test]
fn numbers_hash_as_the_text_redis_receives() {
    let server = Redis::start().expect("redis");
    let mut con = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("PFADD")
        .arg("nums")
        .arg(&[1i64, 22, 333, -4])
        .query(&mut con)
        .unwrap();
    let mut h = Hll::new();
    for v in ["1", "22", "333", "-4"] {
        h.add(v.as_bytes());
    }
    let stored: Vec<u8> = con.get("nums").unwrap();
    assert_eq!(
        Hll::from_redis_bytes(&stored).unwrap().registers(),
        h.registers()
    );
}

#[test]
fn sparse_sketches_set_then_pfmerged_equal_pfadd_of_every_value() {
    // The speed layer's path: each flush builds a small sketch here and
    // SETs it (new key) or PFMERGEs it (existing key) in Redis.
    let server = Redis::start().expect("redis");
    let mut con = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    for (n, per_chunk) in [(300u64, 7usize), (5_000, 50), (40_000, 1_000)] {
        let vals = values(0..n);
        let key = format!("merged:{n}");
        for chunk in vals.chunks(per_chunk) {
            let bytes = sketch(chunk).to_redis_bytes();
            let exists: bool = con.exists(&key).unwrap();
            if exists {
                let _: () = con.set("tmp", bytes).unwrap();
                let _: () = redis::cmd("PFMERGE")
                    .arg(&key)
                    .arg("tmp")
                    .query(&mut con)
                    .unwrap();
            } else {
                let _: () = con.set(&key, bytes).unwrap();
            }
        }
        let reference = format!("pfadd:{n}");
        pfadd_all(&mut con, &reference, &vals);
        let merged: Vec<u8> = con.get(&key).unwrap();
        let added: Vec<u8> = con.get(&reference).unwrap();
        assert_eq!(
            Hll::from_redis_bytes(&merged).unwrap().registers(),
            Hll::from_redis_bytes(&added).unwrap().registers(),
            "{n} values in chunks of {per_chunk}"
        );
        let count: u64 = redis::cmd("PFCOUNT").arg(&key).query(&mut con).unwrap();
        let want: u64 = redis::cmd("PFCOUNT")
            .arg(&reference)
            .query(&mut con)
            .unwrap();
        assert_eq!(count, want, "{n}: PFCOUNT");
        assert_eq!(
            Hll::from_redis_bytes(&merged).unwrap().count(),
            want,
            "{n}: count here"
        );
    }
}
