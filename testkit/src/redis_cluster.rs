//! A private Redis Cluster: `masters` primaries with `replicas` replicas
//! each, every node a `redis-server --cluster-enabled yes` without
//! persistence on free ports, joined by `redis-cli --cluster create`.
//!
//! Guarantee: [`RedisCluster::start`] returns once every node reports
//! `cluster_state:ok` and every replica has finished its first sync (a
//! replica that never synced holds nothing and may not take over), and [`RedisCluster::kill_master`] +
//! [`RedisCluster::wait_promoted`] once a replica serves the dead master's
//! slots (nodes time out after `NODE_TIMEOUT_MS`, so that takes a few
//! seconds). Dropping the value stops every node.

use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{free_port, Error, Server};

/// `cluster-node-timeout`: how soon a silent master is failed over.
const NODE_TIMEOUT_MS: u64 = 1000;

/// One node of the cluster.
#[derive(Debug)]
struct Node {
    port: u16,
    /// `None` once killed.
    server: Option<Server>,
}

/// A running private Redis Cluster. Dropping it stops every node.
#[derive(Debug)]
pub struct RedisCluster {
    /// Before `dir`: the servers stop before their folder goes.
    nodes: Vec<Node>,
    dir: TempDir,
}

impl RedisCluster {
    /// Start `masters` primaries with `replicas` replicas each, and wait
    /// until the cluster is up.
    pub fn start(masters: usize, replicas: usize) -> Result<RedisCluster, Error> {
        let dir = tempfile::Builder::new()
            .prefix("tally-redis-cluster-")
            .tempdir()?;
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let port = free_port()?;
            let server = spawn(&dir, port)?;
            nodes.push(Node {
                port,
                server: Some(server),
            });
        }
        let cli = std::env::var("TALLY_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
        let mut create = Command::new(&cli);
        create.args(["--cluster", "create"]);
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out = create.output().map_err(|source| Error::Spawn {
            what: "redis-cli",
            cmd: format!("{create:?}"),
            source,
        })?;
        if !out.status.success() {
            return Err(Error::Cluster(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let cluster = RedisCluster { nodes, dir };
        cluster.wait_ok(Duration::from_secs(30))?;
        cluster.wait_replicas_synced(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Seed URLs for clients: every live node.
    pub fn seeds(&self) -> Vec<String> {
        self.live_ports()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// The config lines of `[redis]` that reach this cluster with `groups`
    /// partition groups.
    pub fn config_lines(&self, groups: u32) -> String {
        let nodes: Vec<String> = self.seeds().iter().map(|s| format!("\"{s}\"")).collect();
        format!(
            "mode = \"cluster\"\nnodes = [{}]\npartition_groups = {groups}",
            nodes.join(", ")
        )
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.server.is_some())
            .map(|n| n.port)
    }

    /// The ports of the live masters.
    pub fn master_ports(&self) -> Result<Vec<u16>, Error> {
        Ok(self
            .nodes_view()?
            .into_iter()
            .filter(|n| n.master && !n.failed)
            .map(|n| n.port)
            .filter(|p| self.live_ports().any(|l| l == *p))
            .collect())
    }

    /// Kill the master that serves `key`'s slot (a SIGKILL: no goodbye to
    /// the others). Returns its port.
    pub fn kill_master_of(&mut self, key: &str) -> Result<u16, Error> {
        let slot: u16 = query(
            self.any_port()?,
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
        )?;
        let port = self
            .nodes_view()?
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|r| r.contains(&slot)))
            .map(|n| n.port)
            .ok_or_else(|| Error::Cluster(format!("no live master serves slot {slot}")))?;
        self.kill(port);
        Ok(port)
    }

    /// Kill the node on `port`.
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            if let Some(mut s) = n.server.take() {
                s.kill();
            }
        }
    }

    /// Wait until the others mark the node on `port` failed and the cluster
    /// is whole again (a replica took its slots).
    pub fn wait_promoted(&self, port: u16, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let failed = self
                .nodes_view()
                .map(|v| v.iter().any(|n| n.port == port && n.failed))
                .unwrap_or(false);
            if failed {
                break;
            }
            if start.elapsed() > timeout {
                return Err(Error::Cluster(format!(
                    "node {port} was not marked failed within {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_ok(timeout.saturating_sub(start.elapsed()))
    }

    /// Wait until every live node says `cluster_state:ok`.
    pub fn wait_ok(&self, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let ok = self.live_ports().all(|p| {
                query::<String>(p, redis::cmd("CLUSTER").arg("INFO"))
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            });
            if ok {
                return Ok(());
            }
            if start.elapsed() > timeout {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.server.as_ref())
                    .map(|s| std::fs::read_to_string(&s.log).unwrap_or_default())
                    .collect();
                return Err(Error::Cluster(format!(
                    "cluster not ok within {timeout:?} (in {}); logs:\n{}",
                    self.dir.path().display(),
                    logs.join("\n---\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until every live replica's link to its master is up (its first
    /// full sync done).
    fn wait_replicas_synced(&self, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let synced = self.live_ports().all(|p| {
                query::<String>(p, redis::cmd("INFO").arg("replication"))
                    .is_ok_and(|i| !i.contains("role:slave") || i.contains("master_link_status:up"))
            });
            if synced {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(Error::Cluster(format!(
                    "replicas not synced within {timeout:?} (in {})",
                    self.dir.path().display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn any_port(&self) -> Result<u16, Error> {
        self.live_ports()
            .next()
            .ok_or_else(|| Error::Cluster("every node was killed".into()))
    }

    /// `CLUSTER NODES` as a live node sees it.
    fn nodes_view(&self) -> Result<Vec<NodeView>, Error> {
        let text: String = query(self.any_port()?, redis::cmd("CLUSTER").arg("NODES"))?;
        Ok(text.lines().filter_map(NodeView::parse).collect())
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeView {
    port: u16,
    master: bool,
    failed: bool,
    slots: Vec<std::ops::RangeInclusive<u16>>,
}

impl NodeView {
    /// `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`
    fn parse(line: &str) -> Option<NodeView> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let addr = f.get(1)?.split('@').next()?;
        let port = addr.rsplit(':').next()?.parse().ok()?;
        let flags: Vec<&str> = f.get(2)?.split(',').collect();
        let slots = f
            .iter()
            .skip(8)
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| {
                let (a, b) = s.split_once('-').unwrap_or((s, s));
                Some(a.parse().ok()?..=b.parse().ok()?)
            })
            .collect();
        Some(NodeView {
            port,
            master: flags.contains(&"master"),
            failed: flags.contains(&"fail"),
            slots,
        })
    }
}

fn query<T: redis::FromRedisValue>(port: u16, cmd: &mut redis::Cmd) -> Result<T, Error> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .map_err(|e| Error::Cluster(e.to_string()))?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| Error::Cluster(format!("node {port}: {e}")))?;
    cmd.query(&mut con)
        .map_err(|e| Error::Cluster(format!("node {port}: {e}")))
}

fn spawn(dir: &TempDir, port: u16) -> Result<Server, Error> {
    let bin = std::env::var("TALLY_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let bus = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string()])
        .args(["--cluster-enabled", "yes"])
        .arg("--cluster-config-file")
        .arg(dir.path().join(format!("nodes-{port}.conf")))
        .args(["--cluster-port", &bus.to_string()])
        .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
        // A replica syncs at once (the default waits 5 s to batch replicas),
        // and takes over however long its link was down: a test kills
        // masters on purpose, and a replica must never refuse.
        .args(["--repl-diskless-sync-delay", "0"])
        .args(["--cluster-replica-validity-factor", "0"])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        // As the shipped redis.conf has it (the compiled default is 512):
        // quantile sketches past 128 buckets become hash tables, which
        // HINCRBY does not scan (speed/src/hash_encoding.rs).
        .args(["--hash-max-listpack-entries", "128"])
        .args(["--protected-mode", "no"])
        .arg("--dir")
        .arg(dir.path());
    let log = dir.path().join(format!("redis-{port}.log"));
    let mut server = Server::spawn("redis-server", cmd, log)?;
    server.wait_ready("redis-server", port, Duration::from_secs(20))?;
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lines_parse() {
        let n = NodeView::parse("07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,hostname4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected").unwrap();
        assert_eq!(n.port, 30004);
        assert!(!n.master && !n.failed && n.slots.is_empty());
        let n = NodeView::parse(
            "e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 6000 [5461->-abc]",
        )
        .unwrap();
        assert!(n.master);
        assert_eq!(n.slots, vec![0..=5460, 6000..=6000]);
        let n =
            NodeView::parse("e7d1 127.0.0.1:30002@31002 master,fail - 0 0 2 disconnected").unwrap();
        assert!(n.failed);
    }
}
