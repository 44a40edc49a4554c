//! The speed layer and the snapshot cut it reads from the batch's manifests:
//! a slice the batch does not cover yet never expires, however long the cut
//! stalls, and once a cut passes it, it expires after the retention; a
//! corrupt manifest does not stop the layer's start. Against the plain fold,
//! on real Tansu and Redis.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use object_store::memory::InMemory;
use object_store::{ObjectStoreExt, PutPayload};
use tally_core::config::Millis;
use tally_store::manifest::{Manifest, ManifestV2};
use tally_testkit::{kafka, runtime, Broker, Redis};

/// Publish a manifest with cut `cut` for every view of `cfg` (no files: the
/// speed layer reads only the cut).
async fn publish_cut(store: &InMemory, cfg: &tally_core::config::Config, cut: i64) {
    for v in &cfg.views {
        let m = Manifest::V2(ManifestV2 {
            view: v.name.clone(),
            run_id: "r".into(),
            cut,
            definition: v.fingerprint(),
            created_ms: 0,
            levels_ms: vec![v.granularity.as_ms()],
            days: vec![],
            inputs: vec![],
            rows_read: 0,
            skipped: vec![],
        });
        store
            .put(
                &object_store::path::Path::from(tally_store::paths::manifest(&v.name)),
                PutPayload::from(serde_json::to_vec(&m).unwrap()),
            )
            .await
            .unwrap();
    }
}

/// Retention of three seconds, events of four hours ago, and no snapshot (the
/// cut stalled before them): before, each slice was written already expired
/// (end of its epoch + retention) and the counts vanished. Now every slice
/// stays, equal to the fold, for many retentions; once a snapshot's cut
/// passes their epochs, they expire.
#[test]
fn slices_above_a_stalled_cut_never_expire() {
    let broker = Broker::start().unwrap();
    let redis = Redis::start().unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 2).unwrap();
    let evs = events(51, 3_000, 2, base_ms(), 10.0);
    let producer = kafka::producer(&broker.bootstrap(), 100).unwrap();
    let recs = records(&evs, 0);
    kafka::produce(&producer, TOPIC, &recs).unwrap();

    let rt = runtime();
    let mut cfg = config(&broker.bootstrap(), &redis.url(), "retention1");
    cfg.epochs.retention = Millis(3_000);
    let store = Arc::new(InMemory::new());
    let speed = start_with(&rt, &cfg, store.clone());
    wait_caught_up(&redis.url(), &ends(&recs, 2), Duration::from_secs(120));
    // Several retentions with no write and no cut.
    std::thread::sleep(Duration::from_secs(10));
    assert_exact(&redis.url(), &evs);

    // A snapshot now covers every epoch: the slices are left to expire.
    let grid = cfg.epochs.grid();
    let cut = grid.epoch_of(tally_core::time::now_ms()) + 1;
    rt.block_on(publish_cut(&store, &cfg, cut));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left: usize = cfg
            .views
            .iter()
            .map(|v| read_view(&redis.url(), "t", &v.name).len())
            .sum();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} cells still in Redis 20 s after the cut passed them"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    speed.stop(&rt);
}

/// A manifest that is not valid JSON used to stop the speed layer's start
/// (`manifest ... is not valid`). Now its view's cut counts as unknown: an
/// empty Redis is rebuilt from the earliest retained record, which covers any
/// cut, and equals the fold of every record.
#[test]
fn a_corrupt_manifest_does_not_stop_the_start() {
    let broker = Broker::start().unwrap();
    let redis = Redis::start().unwrap();
    kafka::create_topic(&broker.bootstrap(), TOPIC, 2).unwrap();
    let evs = events(52, 2_000, 2, base_ms(), 10.0);
    let producer = kafka::producer(&broker.bootstrap(), 100).unwrap();
    let recs = records(&evs, 0);
    kafka::produce(&producer, TOPIC, &recs).unwrap();

    let rt = runtime();
    let cfg = config(&broker.bootstrap(), &redis.url(), "corrupt1");
    let store = Arc::new(InMemory::new());
    // A good manifest for the first view, whose cut is past every record
    // (alone, it would make the rebuild start at the end), and a corrupt one.
    let grid = cfg.epochs.grid();
    rt.block_on(publish_cut(
        &store,
        &cfg,
        grid.epoch_of(tally_core::time::now_ms()) + 1,
    ));
    rt.block_on(async {
        store
            .put(
                &object_store::path::Path::from(tally_store::paths::manifest(&cfg.views[1].name)),
                PutPayload::from(b"{\"version\":\"2\",\"cu".to_vec()),
            )
            .await
            .unwrap()
    });
    let speed = start_with(&rt, &cfg, store.clone());
    wait_caught_up(&redis.url(), &ends(&recs, 2), Duration::from_secs(120));
    speed.stop(&rt);
    assert_exact(&redis.url(), &evs);
}
