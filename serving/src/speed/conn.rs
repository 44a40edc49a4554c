//! The serving layer's Redis connection: one server or a Redis Cluster,
//! lazily connected, reconnecting, and every round trip bounded in time.
//!
//! Guarantee: an unreachable or slow Redis is a [`RedisReadError`] within the
//! timeout, never a hang; callers turn it into `"degraded": ["redis"]`. On a
//! cluster each pipeline goes to the master of its keys' slot: the mirror's
//! pipelines read one partition group each, whose keys share a hash tag
//! ([`tally_core::keys::Layout`]).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use tally_core::config::{RedisConfig, RedisMode};
use tally_core::keys::Layout;
use tokio::sync::OnceCell;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisReadError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// The connection: a single server's manager, or a cluster connection made
/// at the first query (and again after a failed attempt).
#[derive(Clone)]
enum Con {
    Single(ConnectionManager),
    Cluster {
        client: Box<ClusterClient>,
        con: Arc<OnceCell<ClusterConnection>>,
    },
}

/// A lazily connected, auto-reconnecting Redis client.
#[derive(Clone)]
pub(crate) struct RedisReader {
    con: Con,
    layout: Layout,
    timeout: Duration,
}

impl std::fmt::Debug for RedisReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReader")
            .field("layout", &self.layout)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisReader {
    /// Does not connect: the first command does, and a lost connection is
    /// re-established in the background.
    pub(crate) fn new(cfg: &RedisConfig, timeout: Duration) -> Result<Self, redis::RedisError> {
        let con = match cfg.mode {
            RedisMode::Single => {
                let client = redis::Client::open(cfg.url.as_str())?;
                let manager = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Con::Single(ConnectionManager::new_lazy_with_config(client, manager)?)
            }
            RedisMode::Cluster => Con::Cluster {
                client: Box::new(
                    ClusterClientBuilder::new(cfg.nodes.clone())
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        .retries(1)
                        .build()?,
                ),
                con: Arc::default(),
            },
        };
        Ok(RedisReader {
            con,
            layout: cfg.layout(),
            timeout,
        })
    }

    /// Where each partition group's keys live.
    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Run one pipeline (within one slot on a cluster), bounded by the
    /// timeout.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisReadError> {
        let run = async {
            match &self.con {
                Con::Single(c) => Ok(pipe.query_async(&mut c.clone()).await?),
                Con::Cluster { client, con } => {
                    // A failed attempt leaves the cell empty: the next
                    // query connects again.
                    let c = con
                        .get_or_try_init(|| client.get_async_connection())
                        .await?;
                    Ok(pipe.query_async(&mut c.clone()).await?)
                }
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(RedisReadError::Timeout(self.timeout)),
        }
    }
}
