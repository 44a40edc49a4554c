//! Errors of the speed layer.

use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    NoSuchPartition(#[from] tally_kafka::NoSuchPartition),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Store(#[from] tally_store::StoreError),
    #[error("Redis holds a value Tally did not write ({0}), so nothing was applied: remove what wrote it and restore or delete that key (or flush the key prefix to rebuild from the cut), then restart")]
    ForeignValue(String),
    #[error("Redis lost part of the speed layer's state ({0}), so nothing was applied: rebuilding over what is left would count records twice or miss them. Make Redis keep its keys (maxmemory-policy noeviction, no manual DEL), then delete every key of the prefix (the speed layer rebuilds from the snapshot cut) and restart")]
    PartialLoss(String),
    #[error("{0}, so nothing was applied: another speed layer runs with another view definition. Run every speed layer with the same config; the one started last rebuilds the views from the snapshot cut")]
    OtherDefinition(String),
    #[error("Redis's maxmemory-policy is `{policy}`: it may evict keys, and an evicted offset counts its records twice, an evicted counter loses them. Set `CONFIG SET maxmemory-policy noeviction` (and in redis.conf), or accept the risk with `redis.accept_maxmemory_policy = \"{policy}\"` in tally.toml")]
    Evicting { policy: String },
    #[error("cannot read Redis's maxmemory-policy ({0}): allow `CONFIG GET maxmemory-policy` to Tally's Redis user, or, once you know the server does not evict keys, skip the check with `redis.accept_maxmemory_policy = \"any\"` in tally.toml")]
    PolicyUnknown(String),
    #[error("unexpected reply from the apply script: {0}")]
    ScriptReply(String),
    #[error("the consumer thread stopped unexpectedly: {0}")]
    Thread(String),
}
