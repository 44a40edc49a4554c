//! The apply script, one chunk at a time, against a real Redis: a chunk over
//! several partitions applies all of it or none of it, fenced on every
//! partition's offset, and says what Redis stores when it does not apply.

mod common;

use common::*;
use tally_speed::apply::{Applier, Outcome};
use tally_speed::delta::{Chunk, Folder};
use tally_testkit::{runtime, Redis};

fn ends_of(c: &Chunk) -> [i64; 2] {
    [c.ranges[0].end, c.ranges[1].end]
}

#[test]
fn a_chunk_over_two_partitions_applies_all_or_nothing() {
    let redis = Redis::start().unwrap();
    let rt = runtime();
    let cfg = config("127.0.0.1:9", &redis.url(), "g");
    let mut applier = rt.block_on(Applier::connect(&cfg)).unwrap();
    let mut folder = Folder::new(cfg.views.clone(), cfg.epochs.grid());
    let evs = events(7, 3_000, 2, base_ms(), 10.0);
    let (first, second) = evs.split_at(1_000);
    let apply = |applier: &mut Applier, folder: &Folder, c: &Chunk| {
        rt.block_on(applier.apply(c, folder, base_ms())).unwrap()
    };

    // Nothing stored and not a rebuild start: Redis lost its memory.
    let c = chunk(&mut folder, first, [0, 0], false);
    assert_eq!(
        apply(&mut applier, &folder, &c),
        Outcome::Failed {
            stored: vec![None, None]
        }
    );
    assert_exact(&redis.url(), &[]);

    // A rebuild start applies.
    let c1 = chunk(&mut folder, first, [0, 0], true);
    assert_eq!(apply(&mut applier, &folder, &c1), Outcome::Applied);
    assert_exact(&redis.url(), first);
    let [e0, e1] = ends_of(&c1);

    // Partition 1 claims a start Redis does not store (a zombie's chunk):
    // partition 0's part is not applied either.
    let bad = chunk(&mut folder, second, [e0, e1 + 5], false);
    assert_eq!(
        apply(&mut applier, &folder, &bad),
        Outcome::Failed {
            stored: vec![Some(e0), Some(e1)]
        }
    );
    assert_exact(&redis.url(), first);

    // The right chunk applies; its replay is fenced and changes nothing.
    let c2 = chunk(&mut folder, second, [e0, e1], false);
    assert_eq!(apply(&mut applier, &folder, &c2), Outcome::Applied);
    assert_exact(&redis.url(), &evs);
    let [f0, f1] = ends_of(&c2);
    assert_eq!(
        apply(&mut applier, &folder, &c2),
        Outcome::Failed {
            stored: vec![Some(f0), Some(f1)]
        }
    );
    assert_exact(&redis.url(), &evs);
}
