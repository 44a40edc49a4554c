//! The in-memory copy of the speed layer follows Redis: later flushes show
//! (only the cells they wrote are read again), a slice that expires leaves,
//! and a Redis that lost its data is copied afresh.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use object_store::memory::InMemory;
use tally_core::keys::Keys;
use tally_core::time::Granularity;
use tally_serving::{router, AppState, ServeOptions};

fn whole() -> Q {
    Q {
        from: T0 - 86_400_000,
        to: T0 + SPAN_MS + 86_400_000,
        gran: Granularity::HOUR,
        group_by: vec![0, 1],
        filters: vec![],
        measures: MEASURES.to_vec(),
    }
}

async fn redis_cmd(url: &str, cmd: &mut redis::Cmd) {
    let client = redis::Client::open(url).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: redis::Value = cmd.query_async(&mut conn).await.expect("command");
}

#[tokio::test]
async fn the_copy_follows_flushes_expiry_and_a_redis_that_lost_its_data() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let all = events(51, 3000);
    let (first, rest) = all.split_at(1000);
    let opts = ServeOptions {
        speed_max_age: Duration::from_millis(1),
        ..Default::default()
    };
    // No snapshot: every slice counts.
    let state =
        AppState::new(config(&redis.url(), "t"), Arc::new(InMemory::new()), opts).expect("state");
    let app = router(state);
    write_speed(&redis.url(), "t", &view(), first).await;
    let (_, body) = get(&app, &whole().url()).await;
    compare(&body, &whole(), first);

    // Later flushes, one per batch of events: each one shows.
    let mut seen = first.to_vec();
    for batch in rest.chunks(700) {
        write_speed(&redis.url(), "t", &view(), batch).await;
        seen.extend_from_slice(batch);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (_, body) = get(&app, &whole().url()).await;
        compare(&body, &whole(), &seen);
    }

    // A slice expires: it leaves the slice versions, and the answer.
    let gone = (seen[0].epoch, tally_core::time::day_of(seen[0].t));
    let keys = Keys::new("t");
    redis_cmd(
        &redis.url(),
        redis::cmd("HDEL")
            .arg(keys.slice_versions("pv"))
            .arg(Keys::slice_member(gone.0, gone.1)),
    )
    .await;
    // Any later flush makes the copy look again.
    let extra: Vec<Ev> = events(52, 50)
        .into_iter()
        .filter(|e| (e.epoch, tally_core::time::day_of(e.t)) != gone)
        .take(1)
        .collect();
    write_speed(&redis.url(), "t", &view(), &extra).await;
    let left: Vec<Ev> = seen
        .iter()
        .chain(&extra)
        .filter(|e| (e.epoch, tally_core::time::day_of(e.t)) != gone)
        .cloned()
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, body) = get(&app, &whole().url()).await;
    compare(&body, &whole(), &left);

    // Redis loses everything and the speed layer starts over.
    redis_cmd(&redis.url(), &mut redis::cmd("FLUSHALL")).await;
    let fresh = events(53, 500);
    write_speed(&redis.url(), "t", &view(), &fresh).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, body) = get(&app, &whole().url()).await;
    compare(&body, &whole(), &fresh);
}

/// Slices Redis records under another definition of the view (the speed
/// layer runs another config) are not merged: the answer has no speed part
/// and says `"degraded": ["speed_definition"]`. Once Redis records this
/// definition (the speed layer rebuilt the view), they are merged again.
#[tokio::test]
async fn slices_of_another_view_definition_are_not_merged() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let evs = events(54, 1000);
    let opts = ServeOptions {
        speed_max_age: Duration::from_millis(1),
        ..Default::default()
    };
    let state =
        AppState::new(config(&redis.url(), "t"), Arc::new(InMemory::new()), opts).expect("state");
    let app = router(state);
    write_speed(&redis.url(), "t", &view(), &evs).await;
    let defs = Keys::new("t").definitions();
    redis_cmd(
        &redis.url(),
        redis::cmd("HSET")
            .arg(&defs)
            .arg("pv")
            .arg("another-definition"),
    )
    .await;
    let (_, body) = get(&app, &whole().url()).await;
    assert_eq!(
        body["degraded"],
        serde_json::json!(["speed_definition"]),
        "{body}"
    );
    assert_eq!(body["groups_total"], 0, "{body}");
    assert_eq!(body["freshness"]["speed_slices"], 0, "{body}");

    redis_cmd(
        &redis.url(),
        redis::cmd("HSET")
            .arg(&defs)
            .arg("pv")
            .arg(view().fingerprint()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, body) = get(&app, &whole().url()).await;
    compare(&body, &whole(), &evs);
}

/// Over a Redis Cluster with several partition groups, queries read one
/// roll-up per slice across the groups. It follows flushes into any group;
/// when one group's slice expires it is built again from the other groups'
/// parts; when one group loses its data that group is copied afresh and
/// the others stay. Each step is checked against the fold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_cluster_the_roll_up_across_groups_follows_every_group() {
    const GROUPS: u32 = 4;
    let cluster = tokio::task::spawn_blocking(|| tally_testkit::RedisCluster::start(3, 0))
        .await
        .expect("join")
        .expect("redis cluster");
    let (cfg, mut con) = cluster_config(cluster.seeds(), "t", GROUPS).await;
    let layout = cfg.redis.layout();
    let opts = ServeOptions {
        speed_max_age: Duration::from_millis(1),
        ..Default::default()
    };
    // No snapshot: every slice counts.
    let state = AppState::new(cfg, Arc::new(InMemory::new()), opts).expect("state");
    let app = router(state);

    // Flushes into every group in turn, events spread over the groups.
    let mut seen: Vec<(u32, Ev)> = Vec::new();
    for (i, batch) in events(61, 3000).chunks(500).enumerate() {
        for g in 0..GROUPS {
            let part: Vec<Ev> = batch
                .iter()
                .enumerate()
                .filter(|(j, _)| (i + j) as u32 % GROUPS == g)
                .map(|(_, e)| e.clone())
                .collect();
            write_speed_in(&mut con, &layout.keys(g), &view(), &part).await;
            seen.extend(part.into_iter().map(|e| (g, e)));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (_, body) = get(&app, &whole().url()).await;
        compare(&body, &whole(), &evs_of(&seen));
    }

    // Group 0's part of one slice expires; a later flush of group 0 makes
    // the copy look again.
    let slice_of = |e: &Ev| (e.epoch, tally_core::time::day_of(e.t));
    let gone = slice_of(&seen[0].1);
    let k0 = layout.keys(0);
    let _: i64 = redis::cmd("HDEL")
        .arg(k0.slice_versions("pv"))
        .arg(Keys::slice_member(gone.0, gone.1))
        .query_async(&mut con)
        .await
        .expect("hdel");
    let extra: Vec<Ev> = events(62, 50)
        .into_iter()
        .filter(|e| slice_of(e) != gone)
        .take(1)
        .collect();
    write_speed_in(&mut con, &k0, &view(), &extra).await;
    seen.retain(|(g, e)| *g != 0 || slice_of(e) != gone);
    seen.extend(extra.into_iter().map(|e| (0, e)));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, body) = get(&app, &whole().url()).await;
    compare(&body, &whole(), &evs_of(&seen));

    // Group 1 loses every key and its speed layer starts over.
    let pattern = format!(
        "{}*",
        layout
            .keys(1)
            .version()
            .split(':')
            .take(2)
            .collect::<Vec<_>>()
            .join(":")
    );
    let lost: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut con)
        .await
        .expect("keys");
    assert!(!lost.is_empty(), "no keys match {pattern}");
    for k in lost {
        let _: i64 = redis::cmd("DEL")
            .arg(k)
            .query_async(&mut con)
            .await
            .expect("del");
    }
    let fresh = events(63, 400);
    write_speed_in(&mut con, &layout.keys(1), &view(), &fresh).await;
    seen.retain(|(g, _)| *g != 1);
    seen.extend(fresh.into_iter().map(|e| (1, e)));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, body) = get(&app, &whole().url()).await;
    compare(&body, &whole(), &evs_of(&seen));
}

fn evs_of(seen: &[(u32, Ev)]) -> Vec<Ev> {
    seen.iter().map(|(_, e)| e.clone()).collect()
}
