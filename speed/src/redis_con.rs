//! The speed layer's Redis connection: one server (`redis.mode = "single"`)
//! or a Redis Cluster (`"cluster"`), behind one type.
//!
//! [`RedisCon`] is a [`ConnectionLike`], so commands, pipelines and scripts
//! run on either. On a cluster a command goes to the master of its first
//! key's slot, a pipeline must stay within one slot (each partition group's
//! keys share one: see `tally_core::keys`), and `SCRIPT LOAD` goes to every
//! node, so a script's `EVALSHA` finds it on whichever master (or promoted
//! replica) serves the slot. What must hold on every node (the eviction
//! policy, the wipe of a rebuild) uses [`RedisCon::every_node`] and
//! [`RedisCon::masters`].

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use tally_core::config::{RedisConfig, RedisMode};

/// A connection to a Redis server or cluster; cheap to clone (one
/// multiplexed connection underneath).
#[derive(Clone)]
pub enum RedisCon {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisCon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisCon::Single(_) => "RedisCon::Single",
            RedisCon::Cluster(_) => "RedisCon::Cluster",
        })
    }
}

impl RedisCon {
    /// Connect as `cfg` says; each call answers within `response_timeout`.
    pub async fn connect(
        cfg: &RedisConfig,
        response_timeout: Duration,
    ) -> Result<RedisCon, RedisError> {
        match cfg.mode {
            RedisMode::Single => {
                let client = redis::Client::open(cfg.url.as_str())?;
                let manager =
                    ConnectionManagerConfig::new().set_response_timeout(Some(response_timeout));
                Ok(RedisCon::Single(
                    ConnectionManager::new_with_config(client, manager).await?,
                ))
            }
            RedisMode::Cluster => {
                let client = ClusterClientBuilder::new(cfg.nodes.clone())
                    .response_timeout(response_timeout)
                    .build()?;
                Ok(RedisCon::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// Run `cmd` on every node (the one server, or every master and
    /// replica of the cluster): each node's address and reply.
    pub(crate) async fn every_node(
        &mut self,
        cmd: Cmd,
    ) -> Result<Vec<(String, Value)>, RedisError> {
        match self {
            RedisCon::Single(c) => {
                let v: Value = cmd.query_async(c).await?;
                Ok(vec![("redis".to_owned(), v)])
            }
            RedisCon::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None));
                by_node(c.route_command(cmd, routing).await?)
            }
        }
    }

    /// Run `cmd` on one node of [`RedisCon::masters`]: for commands like
    /// `SCAN` that see one node's keys.
    pub(crate) async fn on_node(&mut self, node: &Node, cmd: Cmd) -> Result<Value, RedisError> {
        match (self, node) {
            (RedisCon::Single(c), _) => cmd.query_async(c).await,
            (RedisCon::Cluster(c), Node::Address(host, port)) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                c.route_command(cmd, routing).await
            }
            (RedisCon::Cluster(c), Node::Single) => cmd.query_async(c).await,
        }
    }

    /// The masters: the one server, or each master of the cluster.
    pub(crate) async fn masters(&mut self) -> Result<Vec<Node>, RedisError> {
        match self {
            RedisCon::Single(_) => Ok(vec![Node::Single]),
            RedisCon::Cluster(c) => {
                let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(c).await?;
                Ok(text.lines().filter_map(master_address).collect())
            }
        }
    }
}

/// A node to send a command to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// The one server.
    Single,
    /// A cluster node at host and port.
    Address(String, u16),
}

/// The address of a live master in one line of `CLUSTER NODES`
/// (`<id> <ip:port@cport[,hostname]> <flags> …`).
fn master_address(line: &str) -> Option<Node> {
    let mut f = line.split_whitespace();
    let addr = f.nth(1)?.split(['@', ',']).next()?;
    let flags = f.next()?;
    let is = |flag: &str| flags.split(',').any(|x| x == flag);
    if !is("master") || is("fail") || is("noaddr") {
        return None;
    }
    let (host, port) = addr.rsplit_once(':')?;
    Some(Node::Address(host.to_owned(), port.parse().ok()?))
}

/// A multi-node reply (a map of address to reply) as pairs.
fn by_node(v: Value) -> Result<Vec<(String, Value)>, RedisError> {
    match v {
        Value::Map(pairs) => Ok(pairs
            .into_iter()
            .map(|(k, v)| {
                let addr = match k {
                    Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                    other => format!("{other:?}"),
                };
                (addr, v)
            })
            .collect()),
        other => Ok(vec![("cluster".to_owned(), other)]),
    }
}

impl ConnectionLike for RedisCon {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisCon::Single(c) => c.req_packed_command(cmd),
            RedisCon::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisCon::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisCon::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisCon::Single(c) => c.get_db(),
            RedisCon::Cluster(c) => c.get_db(),
        }
    }
}

/// A blocking reader of stored offsets, for the rebalance callback (which
/// runs on the consume thread, outside the runtime).
#[derive(Debug, Clone)]
pub(crate) enum SyncRedis {
    Single(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

impl SyncRedis {
    pub(crate) fn open(cfg: &RedisConfig) -> Result<SyncRedis, RedisError> {
        Ok(match cfg.mode {
            RedisMode::Single => {
                SyncRedis::Single(Box::new(redis::Client::open(cfg.url.as_str())?))
            }
            RedisMode::Cluster => SyncRedis::Cluster(Box::new(
                ClusterClientBuilder::new(cfg.nodes.clone())
                    .connection_timeout(Duration::from_secs(5))
                    .response_timeout(Duration::from_secs(10))
                    .build()?,
            )),
        })
    }

    /// Run one command.
    pub(crate) fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisError> {
        match self {
            SyncRedis::Single(c) => cmd.query(&mut c.get_connection()?),
            SyncRedis::Cluster(c) => cmd.query(&mut c.get_connection()?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_masters_are_read_from_cluster_nodes() {
        let text = "a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                    b 127.0.0.1:7001@17001,host1 master - 0 0 2 connected 5461-10922\n\
                    c 127.0.0.1:7002@17002 master,fail - 0 0 3 disconnected\n\
                    d 127.0.0.1:7003@17003 slave a 0 0 1 connected\n";
        let got: Vec<Node> = text.lines().filter_map(master_address).collect();
        assert_eq!(
            got,
            vec![
                Node::Address("127.0.0.1".into(), 7000),
                Node::Address("127.0.0.1".into(), 7001)
            ]
        );
    }
}
