//! The serving layer's Redis connection: lazily connected, reconnecting, and
//! every round trip bounded in time.
//!
//! Guarantee: an unreachable or slow Redis is a [`RedisReadError`] within the
//! timeout, never a hang; callers turn it into `"degraded": ["redis"]`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tally_core::keys::Keys;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisReadError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// A lazily connected, auto-reconnecting Redis client.
#[derive(Clone)]
pub(crate) struct RedisReader {
    conn: ConnectionManager,
    keys: Keys,
    timeout: Duration,
}

impl std::fmt::Debug for RedisReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReader")
            .field("prefix", &self.keys.prefix())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisReader {
    /// Does not connect: the first command does, and a lost connection is
    /// re-established in the background.
    pub(crate) fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg)?;
        Ok(RedisReader {
            conn,
            keys: Keys::new(prefix),
            timeout,
        })
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Run one pipeline, bounded by the timeout.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisReadError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RedisReadError::Timeout(self.timeout)),
        }
    }
}
