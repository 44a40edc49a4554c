//! The archiver against a real broker (a private Tansu): every produced record
//! is in the master dataset exactly once by coordinates, with its raw bytes,
//! also when the archiver is killed at random points and restarted.
//!
//! `TALLY_TEST_ARCHIVE_N` sets the number of records (default 100,000).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tally_batch::archive;
use tally_batch::archive_file;
use tally_store::cut::CutFile;
use tally_store::paths;
use tally_store::progress::ProgressFile;

const T0: i64 = 1_704_067_200_000;
const HOUR: i64 = 3_600_000;
const PARTITIONS: i32 = 4;

fn record(i: usize, ts: i64) -> Vec<u8> {
    if i.is_multiple_of(97) {
        return format!("not json {i}").into_bytes();
    }
    format!(
        r#"{{"event_id":"e{i}","event_type":"page_view","timestamp":{},"user_id":"u{}","properties":{{"page":"/p{}","duration":{}}}}}"#,
        ts - (i as i64 % 1000),
        i % 777,
        i % 5,
        i % 300
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_archived_exactly_once_across_crashes() {
    let n: usize = std::env::var("TALLY_TEST_ARCHIVE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let broker = tally_testkit::Broker::start().expect("start tansu");
    let bootstrap = broker.bootstrap();

    // Topic with several partitions.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let res = admin
        .create_topics(
            &[NewTopic::new(
                "events",
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for r in res {
        r.unwrap();
    }

    // Produce in batches of up to 1,000 records, over three ingest epochs.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "1000")
        .set("enable.idempotence", "false")
        .create()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut sent: HashMap<(i32, usize), Vec<u8>> = HashMap::new();
    let started = Instant::now();
    for i in 0..n {
        let p = rng.gen_range(0..PARTITIONS);
        let ts = T0 + rng.gen_range(0..3 * HOUR);
        let body = record(i, ts);
        loop {
            match producer.send(
                BaseRecord::<(), [u8]>::to("events")
                    .partition(p)
                    .payload(&body)
                    .timestamp(ts),
            ) {
                Ok(()) => break,
                Err((e, _)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "{e}"
                    );
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
        sent.insert((p, i), body);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    eprintln!("produced {n} records in {:?}", started.elapsed());

    // End offsets: what must be archived. Counted, not asked: Tansu 0.6
    // reports the last record batch's base offset + 1 as the high watermark.
    let mut ends = vec![0i64; PARTITIONS as usize];
    for (p, _) in sent.keys() {
        ends[*p as usize] += 1;
    }
    let held = n;

    let dir = tempfile::tempdir().unwrap();
    // Killed within 1.5 s: sooner than a group join on Tansu (a few
    // seconds), so `all`; group membership has its own tests (archive_group.rs).
    let store_url = format!("file://{}", dir.path().display());
    let group = format!("archive-test-{}", rand::random::<u32>());
    let cfg = common::archive_config(&bootstrap, "events", &group, "all", &store_url);
    let store = tally_store::open(&cfg.store).unwrap();

    // Kill the archiver at random points, several times.
    let started = Instant::now();
    for round in 0..4 {
        let (cfg2, store2) = (cfg.clone(), store.clone());
        let task =
            tokio::spawn(async move { archive::run(&cfg2, store2, std::future::pending()).await });
        let wait = rng.gen_range(300..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        task.abort();
        match task.await {
            Err(e) if e.is_cancelled() => {}
            other => panic!("round {round}: archiver ended on its own: {other:?}"),
        }
    }

    // A final run to completion.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (cfg2, store2) = (cfg.clone(), store.clone());
    let task = tokio::spawn(async move {
        archive::run(&cfg2, store2, async {
            let _ = rx.await;
        })
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut done = true;
        for p in 0..PARTITIONS {
            let prog = tally_store::object::get_json::<ProgressFile>(
                store.as_ref(),
                &paths::archive_progress("events", p),
            )
            .await
            .unwrap();
            let to = prog.map(|(ProgressFile::V1 { archived_to, .. }, _)| archived_to);
            done &= to == Some(ends[p as usize]);
        }
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "archiver did not finish in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = tx.send(());
    let summary = task.await.unwrap().unwrap();
    eprintln!("archived in {:?}: {summary:?}", started.elapsed());

    // Exactly once by coordinates, with the raw bytes.
    let files = tally_store::object::list(store.as_ref(), paths::EVENTS_ROOT)
        .await
        .unwrap();
    let mut seen: HashMap<(i32, i64), usize> = HashMap::new();
    let mut payloads: HashMap<(i32, i64), Vec<u8>> = HashMap::new();
    let mut rejects = 0usize;
    for f in &files {
        let path = f.location.to_string();
        let parsed = paths::parse_archive_file(&path).expect("only archive files under events/");
        let batches = archive_file::read_all(store.clone(), &path).await.unwrap();
        for b in &batches {
            let raw = b
                .column_by_name("raw")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::BinaryArray>()
                .unwrap();
            let reject = b
                .column_by_name("reject")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            let epoch = b
                .column_by_name("epoch")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap();
            for (r, (t, p, o)) in archive_file::coordinates(std::slice::from_ref(b))
                .into_iter()
                .enumerate()
            {
                assert_eq!(t, "events");
                assert_eq!(p, parsed.partition);
                assert_eq!(epoch.value(r), parsed.epoch, "record in its epoch's folder");
                *seen.entry((p, o)).or_default() += 1;
                payloads.insert((p, o), raw.value(r).to_vec());
                if arrow_array::Array::is_valid(reject, r) {
                    rejects += 1;
                }
            }
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, &c)| c > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicated coordinates: {dups:?}");
    for p in 0..PARTITIONS {
        for o in 0..ends[p as usize] {
            assert_eq!(
                seen.get(&(p, o)),
                Some(&1),
                "partition {p} offset {o} missing"
            );
        }
    }
    assert_eq!(seen.len(), held);
    // The raw bytes are what was produced (each body is unique by its index).
    let produced: std::collections::HashSet<Vec<u8>> = sent.into_values().collect();
    let distinct: std::collections::HashSet<&Vec<u8>> = payloads.values().collect();
    assert_eq!(
        distinct.len(),
        held,
        "each archived record is a distinct produced record"
    );
    assert!(
        payloads.values().all(|p| produced.contains(p)),
        "raw bytes differ from what was produced"
    );
    let invalid = payloads
        .values()
        .filter(|p| p.starts_with(b"not json"))
        .count();
    assert_eq!(rejects, invalid, "invalid records are kept and flagged");

    // The cut moved past every epoch (wall clock is far beyond 2024 + grace).
    let (CutFile::V1 { cut, .. }, _) =
        tally_store::object::get_json::<CutFile>(store.as_ref(), paths::CUT)
            .await
            .unwrap()
            .expect("a published cut");
    assert!(cut >= T0 / HOUR + 3, "cut {cut}");
    drop(broker);
}
