//! One Kafka-time rule in both layers, against the real broker: records
//! without a Kafka timestamp, and with timestamps at and past the ends of the
//! range Tally accepts, get the same verdict from the speed layer (its dead
//! letters) and the archiver (the reject codes it keeps), each layer files
//! what it takes under the epoch of the record's own timestamp, never the
//! wall clock's, and the speed layer's counters are the plain fold.

#[path = "../speed/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Array, Int64Array, StringArray};
use common::*;
use tally_batch::{archive, archive_file};
use tally_store::object as store;
use tally_store::paths;
use tally_store::progress::ProgressFile;
use tally_testkit::gen::Generated;
use tally_testkit::kafka::Record;
use tally_testkit::{kafka, runtime, Broker, Redis};

const HOUR: i64 = 3_600_000;
/// 9999-12-31T23:59:59.999Z, the last Kafka time an event may have.
const LAST: i64 = 253_402_300_799_999;

/// A valid event stamped `time_ms`, sent with Kafka timestamp `kafka_ts`.
fn event(i: usize, time_ms: i64, kafka_ts: i64) -> Ev {
    let payload = format!(
        r#"{{"event_id":"x{i}","event_type":"page_view","timestamp":{time_ms},"user_id":"u{i}","properties":{{"page":"/edge","duration":{i}}}}}"#
    );
    Ev {
        partition: 0,
        g: Generated {
            key: format!("x{i}").into_bytes(),
            payload: payload.into_bytes(),
            kafka_ts_ms: kafka_ts,
            valid: true,
            kind: None,
        },
    }
}

/// What the archiver kept of each offset: (reject code, epoch, Kafka time).
type Kept = BTreeMap<i64, (Option<String>, i64, i64)>;

async fn kept(store: &Arc<dyn object_store::ObjectStore>) -> Kept {
    let mut out = Kept::new();
    for f in store::list(store.as_ref(), paths::EVENTS_ROOT)
        .await
        .unwrap()
    {
        let path = f.location.to_string();
        let file = paths::parse_archive_file(&path).expect("an archive file");
        let batches = archive_file::read_all(store.clone(), &path).await.unwrap();
        for b in &batches {
            let col = |name: &str| b.column_by_name(name).unwrap().clone();
            let reject = col("reject");
            let reject = reject.as_any().downcast_ref::<StringArray>().unwrap();
            let epoch = col("epoch");
            let epoch = epoch.as_any().downcast_ref::<Int64Array>().unwrap();
            let ts = col("kafka_ts_ms");
            let ts = ts.as_any().downcast_ref::<Int64Array>().unwrap();
            for (r, (_, _, o)) in archive_file::coordinates(std::slice::from_ref(b))
                .into_iter()
                .enumerate()
            {
                assert_eq!(epoch.value(r), file.epoch, "filed under its epoch");
                let code = reject.is_valid(r).then(|| reject.value(r).to_owned());
                out.insert(o, (code, epoch.value(r), ts.value(r)));
            }
        }
    }
    out
}

#[test]
fn both_layers_take_kafka_times_by_one_rule_at_the_extremes() {
    let broker = Broker::start().unwrap();
    let redis = Redis::start().unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 1).unwrap();
    kafka::create_topic(&broker.bootstrap(), "dead", 1).unwrap();
    let base = base_ms();
    // Ordinary traffic, and each extreme among it with the verdict it must
    // get (`None`: counted).
    let extremes: [(i64, i64, Option<&str>); 9] = [
        (base, -1, Some("no_kafka_timestamp")),
        (base, -2, Some("kafka_timestamp_out_of_range")),
        (base, i64::MIN, Some("kafka_timestamp_out_of_range")),
        (base, base * 1000, Some("kafka_timestamp_out_of_range")),
        (LAST, LAST + 1, Some("kafka_timestamp_out_of_range")),
        (i64::MAX, i64::MAX, Some("kafka_timestamp_out_of_range")),
        (LAST, LAST, None),
        (1, 1, None),
        (i64::MAX, LAST, Some("timestamp_out_of_range")),
    ];
    let mut sent: Vec<(Ev, Option<&str>)> = events(41, 500, 1, base, 20.0)
        .into_iter()
        .map(|e| (e, None))
        .collect();
    for (i, (time, kts, verdict)) in extremes.into_iter().enumerate() {
        let mut e = event(i, time, kts);
        e.g.valid = verdict.is_none();
        sent.insert(20 + 50 * i, (e, verdict));
    }
    // One partition: a record's offset is its place in the list.
    let (evs, want): (Vec<Ev>, Vec<Option<&str>>) = sent.into_iter().unzip();
    let recs: Vec<Record> = records(&evs, 0);
    let producer = kafka::producer(&broker.bootstrap(), 100).unwrap();
    kafka::produce(&producer, TOPIC, &recs).unwrap();
    let n = recs.len() as i64;

    // The speed layer: dead letters with the reasons, counters as the fold.
    let rt = runtime();
    let cfg = config(&broker.bootstrap(), &redis.url(), "ktime");
    let speed = start(&rt, &cfg);
    wait_caught_up(&redis.url(), &[n], Duration::from_secs(60));
    speed.stop(&rt);
    let want_rejected: BTreeMap<i64, String> = want
        .iter()
        .enumerate()
        .filter_map(|(o, v)| v.map(|v| (o as i64, v.to_owned())))
        .collect();
    let dead = kafka::read_n(&broker.bootstrap(), "dead", 1, want_rejected.len()).unwrap();
    let mut dead_letters: BTreeMap<i64, String> = BTreeMap::new();
    for d in &dead {
        let h = |k: &str| {
            d.headers
                .iter()
                .find(|(x, _)| x == k)
                .map(|(_, v)| v.clone())
        };
        let o: i64 = h("tally.source.offset").unwrap().parse().unwrap();
        dead_letters.insert(o, h("tally.reason").unwrap());
    }
    assert_eq!(dead_letters, want_rejected, "the speed layer's verdicts");
    // Every counted record is live in Redis, the one of 1970 too: a slice
    // lives a full retention from its last write, and no snapshot covers its
    // epoch yet (before, it was written already expired, and counted nowhere
    // until a batch run).
    assert_exact(&redis.url(), &evs);

    // The archiver: the same verdicts, and each record under the epoch of
    // the Kafka time the broker delivered (-1: none).
    let mut cfg = cfg.clone();
    cfg.store.url = "memory://".into();
    // Files rolled at once, not after the default minute.
    cfg.archive.roll_interval = tally_core::config::Millis(300);
    let store = tally_store::open(&cfg.store).unwrap();
    let kept = rt.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (c, s) = (cfg.clone(), store.clone());
        let task = tokio::spawn(async move {
            archive::run(&c, s, async {
                let _ = rx.await;
            })
            .await
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p =
                store::get_json::<ProgressFile>(store.as_ref(), &paths::archive_progress(TOPIC, 0))
                    .await
                    .unwrap();
            if matches!(p, Some((ProgressFile::V1 { archived_to, .. }, _)) if archived_to == n) {
                break;
            }
            assert!(Instant::now() < deadline, "not archived in time");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = tx.send(());
        task.await.unwrap().unwrap();
        kept(&store).await
    });
    assert_eq!(kept.len() as i64, n, "every record kept");
    for (o, e) in evs.iter().enumerate() {
        let (code, epoch, ts) = &kept[&(o as i64)];
        assert_eq!(
            code.as_deref(),
            want[o],
            "offset {o}: the archiver's verdict"
        );
        let sent = e.g.kafka_ts_ms;
        assert_eq!(*ts, sent, "offset {o}: the Kafka time as sent");
        assert_eq!(*epoch, sent.div_euclid(HOUR), "offset {o}: its epoch");
    }
}
