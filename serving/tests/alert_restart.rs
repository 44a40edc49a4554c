//! Threshold alerts across a restart of the serving role: the rules' states
//! and the undelivered notifications are kept in Redis. A rule firing while
//! its receiver is down is delivered after the restart under the same id,
//! and does not fire twice for the episode; a condition that cleared during
//! the restart resolves once; a changed rule starts `ok`; a rule no longer
//! configured is forgotten; without Redis the rules are evaluated in memory
//! and their state is written once Redis is back; a second serving process
//! stands by while the first holds the lease; on a Redis Cluster the keys
//! share one slot. What each rule should do is read from the fold of the
//! events (`truth_at`), never from the server.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::alerting::*;
use common::*;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use tally_core::config::{AlertRule, Comparison, Config};
use tally_serving::{router, AppState, ServeOptions};

/// A serving role's state with its loops running (alert loop, sender).
struct Server {
    state: AppState,
    loops: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(cfg: &Config, store: &Arc<InMemory>) -> Server {
        let store: Arc<dyn ObjectStore> = store.clone();
        let state = AppState::new(cfg.clone(), store, ServeOptions::default()).expect("state");
        state.refresh().await;
        let loops = tally_serving::spawn_loops(&state);
        Server { state, loops }
    }

    async fn evaluate(&self, t: i64) {
        tally_serving::alert::run::evaluate(&self.state, t).await;
    }

    async fn alerts(&self) -> serde_json::Value {
        let (status, body) = get(&router(self.state.clone()), "/api/v1/alerts").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Stop as at shutdown: the loops end and the lease is given up.
    async fn stop(self) {
        self.state.stop();
        tokio::time::timeout(Duration::from_secs(10), self.loops)
            .await
            .expect("the loops end")
            .expect("join");
    }
}

fn statuses(got: &[serde_json::Value]) -> Vec<(String, String)> {
    got.iter()
        .map(|n| {
            (
                n["status"].as_str().unwrap_or_default().to_owned(),
                n["id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn redis_con(redis: &tally_testkit::Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// Wait until no more notifications arrive (the sender is idle).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

#[tokio::test]
async fn a_firing_notification_undelivered_at_a_restart_is_delivered_after_it_once() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let fx = Crossing::publish(&redis).await;
    let (recv, url) = receiver(0).await;
    recv.down.store(true, Ordering::SeqCst);
    let mut cfg = config_with(&redis.url(), vec![rule("home", &url, fx.threshold, None)]);
    cfg.alerting.max_attempts = 1_000;
    let (t1, t2) = fx.first_two_holding();

    let first = Server::start(&cfg, &fx.store).await;
    first.evaluate(t1).await;
    let id = format!("home:firing:{t1}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while recv.refused().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(recv.refused().first(), Some(&id), "tried, refused");
    let body = first.alerts().await;
    assert_eq!(body["alerts"][0]["state"], "firing", "{body}");
    assert_eq!(body["queued"], 1, "{body}");
    assert_eq!(body["persisted"], true, "{body}");
    first.stop().await;

    // Restarted with the receiver still down, which then comes up.
    let second = Server::start(&cfg, &fx.store).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    recv.down.store(false, Ordering::SeqCst);
    let got = recv.wait_for(1).await;
    assert_eq!(statuses(&got), [("firing".to_owned(), id.clone())]);
    assert_eq!(got[0]["episode"], format!("home:{t1}"));
    assert_eq!(got[0]["at_ms"], t1);
    assert_eq!(got[0]["value"].as_f64(), Some(truth_at(&fx.evs, t1) as f64));
    assert!(recv.refused().iter().all(|r| r == &id), "one id throughout");

    // Still firing at t2: the episode goes on, nothing is sent.
    second.evaluate(t2).await;
    settle().await;
    assert_eq!(statuses(&recv.got()), [("firing".to_owned(), id.clone())]);
    let body = second.alerts().await;
    assert_eq!(body["alerts"][0]["state"], "firing", "{body}");
    assert_eq!(body["alerts"][0]["episode"], format!("home:{t1}"), "{body}");
    assert_eq!(body["queued"], 0, "{body}");
    let mut con = redis_con(&redis).await;
    let waiting: u64 = redis::cmd("XLEN")
        .arg("t:alerts:out")
        .query_async(&mut con)
        .await
        .expect("xlen");
    assert_eq!(waiting, 0, "a delivered notification leaves Redis");
    second.stop().await;
}

#[tokio::test]
async fn a_condition_that_cleared_during_a_restart_resolves_once() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let fx = Crossing::publish(&redis).await;
    let (recv, url) = receiver(0).await;
    let cfg = config_with(&redis.url(), vec![rule("home", &url, fx.threshold, None)]);
    let t1 = fx.holds()[0];
    let clear = fx.clear();
    let mut later = clear.iter().filter(|&&t| t > t1);
    let (t2, t3) = (
        *later.next().expect("a clear instant"),
        *later.next().expect("another"),
    );

    let first = Server::start(&cfg, &fx.store).await;
    first.evaluate(t1).await;
    assert_eq!(recv.wait_for(1).await.len(), 1);
    first.stop().await;

    let second = Server::start(&cfg, &fx.store).await;
    second.evaluate(t2).await;
    second.evaluate(t3).await;
    let got = recv.wait_for(2).await;
    settle().await;
    assert_eq!(
        statuses(&recv.got()),
        [
            ("firing".to_owned(), format!("home:firing:{t1}")),
            ("resolved".to_owned(), format!("home:resolved:{t1}")),
        ]
    );
    assert_eq!(got[1]["episode"], format!("home:{t1}"));
    assert_eq!(got[1]["at_ms"], t2);
    assert_eq!(got[1]["value"].as_f64(), Some(truth_at(&fx.evs, t2) as f64));
    let body = second.alerts().await;
    assert_eq!(body["alerts"][0]["state"], "ok", "{body}");
    second.stop().await;
}

#[tokio::test]
async fn a_changed_rule_starts_ok_and_a_removed_one_is_forgotten() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let fx = Crossing::publish(&redis).await;
    let (recv, url) = receiver(0).await;
    let home = rule("home", &url, fx.threshold, None);
    let cfg = config_with(
        &redis.url(),
        vec![home.clone(), rule("gone", &url, fx.threshold, None)],
    );
    let (t1, t2) = fx.first_two_holding();

    let first = Server::start(&cfg, &fx.store).await;
    first.evaluate(t1).await;
    assert_eq!(recv.wait_for(2).await.len(), 2);
    first.stop().await;

    // The same name, another threshold (still crossed at t2).
    let changed = AlertRule {
        threshold: fx.threshold - 1.0,
        ..home
    };
    let cfg = config_with(&redis.url(), vec![changed]);
    let second = Server::start(&cfg, &fx.store).await;
    second.evaluate(t2).await;
    let got = recv.wait_for(3).await;
    settle().await;
    let ids: Vec<(String, String)> = statuses(&got)
        .into_iter()
        .filter(|(_, id)| id.starts_with("home:"))
        .collect();
    assert_eq!(
        ids,
        [
            ("firing".to_owned(), format!("home:firing:{t1}")),
            ("firing".to_owned(), format!("home:firing:{t2}")),
        ],
        "the changed rule fires afresh"
    );
    assert_eq!(recv.got().len(), 3);
    let mut con = redis_con(&redis).await;
    let stored: Vec<String> = redis::cmd("HKEYS")
        .arg("t:alerts:state")
        .query_async(&mut con)
        .await
        .expect("hkeys");
    assert_eq!(stored, ["home"], "the removed rule's state is gone");
    second.stop().await;
}

#[tokio::test]
async fn without_redis_rules_are_evaluated_in_memory_and_written_when_it_is_back() {
    let mut redis = tally_testkit::Redis::start().expect("redis");
    let (recv, url) = receiver(0).await;
    // No events at all: `views < 1` holds whatever Redis holds.
    let mut quiet = rule("quiet", &url, 1.0, None);
    quiet.comparison = Comparison::Below;
    let cfg = config_with(&redis.url(), vec![quiet]);
    let store = Arc::new(InMemory::new());
    let server = Server::start(&cfg, &store).await;
    redis.stop();
    let t1 = T0;
    server.evaluate(t1).await;
    let got = recv.wait_for(1).await;
    assert_eq!(
        statuses(&got),
        [("firing".to_owned(), format!("quiet:firing:{t1}"))]
    );
    let body = server.alerts().await;
    assert_eq!(body["alerts"][0]["state"], "firing", "{body}");
    assert_eq!(body["persisted"], false, "{body}");
    assert_eq!(body["evaluating"], true, "{body}");
    assert!(body["persist_error"].is_string(), "{body}");

    redis.restart_empty().expect("redis back");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut t = t1;
    loop {
        t += MIN;
        server.evaluate(t).await;
        let body = server.alerts().await;
        if body["persisted"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut con = redis_con(&redis).await;
    let stored: Option<String> = redis::cmd("HGET")
        .arg("t:alerts:state")
        .arg("quiet")
        .query_async(&mut con)
        .await
        .expect("hget");
    let stored: serde_json::Value = serde_json::from_str(&stored.expect("written")).expect("json");
    assert_eq!(stored["phase"], "firing", "{stored}");
    assert_eq!(stored["since_ms"], t1, "{stored}");
    settle().await;
    assert_eq!(recv.got().len(), 1, "still one episode");
    server.stop().await;
}

#[tokio::test]
async fn a_second_serving_process_stands_by_and_takes_over_at_shutdown() {
    let redis = tally_testkit::Redis::start().expect("redis");
    let (recv, url) = receiver(0).await;
    let mut quiet = rule("quiet", &url, 1.0, None);
    quiet.comparison = Comparison::Below;
    let cfg = config_with(&redis.url(), vec![quiet]);
    let store = Arc::new(InMemory::new());
    let one = Server::start(&cfg, &store).await;
    let two = Server::start(&cfg, &store).await;
    let t1 = T0;
    one.evaluate(t1).await;
    two.evaluate(t1).await;
    one.evaluate(t1 + MIN).await;
    two.evaluate(t1 + MIN).await;
    let got = recv.wait_for(1).await;
    settle().await;
    assert_eq!(recv.got().len(), 1, "one process sends: {got:?}");
    let (a, b) = (one.alerts().await, two.alerts().await);
    let evaluating = [a["evaluating"] == true, b["evaluating"] == true];
    assert_eq!(evaluating.iter().filter(|e| **e).count(), 1, "{a} {b}");
    // The one standing by shows the stored state.
    assert_eq!(a["alerts"][0]["state"], "firing", "{a}");
    assert_eq!(b["alerts"][0]["state"], "firing", "{b}");
    let (leader, standby) = if evaluating[0] {
        (one, two)
    } else {
        (two, one)
    };
    leader.stop().await;
    standby.evaluate(t1 + 2 * MIN).await;
    let body = standby.alerts().await;
    assert_eq!(body["evaluating"], true, "took over: {body}");
    settle().await;
    assert_eq!(recv.got().len(), 1, "the episode goes on: no second firing");
    standby.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_the_state_is_kept_in_one_slot_across_a_restart() {
    let cluster = tokio::task::spawn_blocking(|| tally_testkit::RedisCluster::start(3, 0))
        .await
        .expect("join")
        .expect("redis cluster");
    let (recv, url) = receiver(0).await;
    let mut quiet = rule("quiet", &url, 1.0, None);
    quiet.comparison = Comparison::Below;
    let mut cfg = config_with("redis://127.0.0.1:1/", vec![quiet]);
    cfg.redis.mode = tally_core::config::RedisMode::Cluster;
    cfg.redis.nodes = cluster.seeds();
    let store = Arc::new(InMemory::new());
    let first = Server::start(&cfg, &store).await;
    first.evaluate(T0).await;
    let got = recv.wait_for(1).await;
    assert_eq!(
        statuses(&got),
        [("firing".to_owned(), format!("quiet:firing:{T0}"))]
    );
    let body = first.alerts().await;
    assert_eq!(body["persisted"], true, "{body}");
    first.stop().await;

    let second = Server::start(&cfg, &store).await;
    second.evaluate(T0 + MIN).await;
    settle().await;
    assert_eq!(recv.got().len(), 1, "no second firing for the episode");
    let body = second.alerts().await;
    assert_eq!(body["alerts"][0]["state"], "firing", "{body}");
    assert_eq!(body["persisted"], true, "{body}");
    assert_eq!(body["evaluating"], true, "{body}");
    let mut con = redis::cluster::ClusterClient::new(cluster.seeds())
        .expect("client")
        .get_async_connection()
        .await
        .expect("connect");
    let stored: Option<String> = redis::cmd("HGET")
        .arg("t:{alerts}:state")
        .arg("quiet")
        .query_async(&mut con)
        .await
        .expect("hget");
    assert!(stored.is_some_and(|s| s.contains("firing")));
    second.stop().await;
}
