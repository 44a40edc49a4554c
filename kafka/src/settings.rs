//! One librdkafka configuration for every Tally consumer.
//!
//! Offsets are Tally's own (Redis for the speed layer, progress objects for
//! the archiver): nothing is auto-committed or auto-stored, and a partition
//! without a committed offset starts at the earliest record (the layers seek
//! to where they really start). Fetching is tuned by the `[kafka]` section:
//! the defaults come from the drain benchmark (see `BENCHMARKS.md`).

use rdkafka::config::ClientConfig;
use tally_core::config::KafkaConfig;

/// How long a group member may go silent before the group hands its
/// partitions to the others.
pub const SESSION_TIMEOUT_MS: u32 = 10_000;

/// How often a member tells the group it is alive: well inside the session.
pub const HEARTBEAT_INTERVAL_MS: u32 = 1_000;

/// The settings of a consumer in `group`. `instance_id` makes it a static
/// member (`group.instance.id`): restarted under the same id, it takes its
/// partitions back at once instead of waiting for its old session to expire.
pub fn consumer_config(
    kafka: &KafkaConfig,
    group: &str,
    instance_id: Option<&str>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", kafka.fetch_wait_max_ms.to_string())
        .set("queued.min.messages", kafka.queued_min_messages.to_string())
        .set(
            "queued.max.messages.kbytes",
            kafka.queued_max_messages_kbytes.to_string(),
        )
        .set(
            "max.partition.fetch.bytes",
            kafka.max_partition_fetch_bytes.to_string(),
        )
        .set(
            "fetch.queue.backoff.ms",
            kafka.fetch_queue_backoff_ms.to_string(),
        )
        .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
        .set("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS.to_string());
    if let Some(id) = instance_id {
        c.set("group.instance.id", id);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefetch_comes_from_the_config_and_offsets_stay_ours() {
        let k = KafkaConfig {
            brokers: "b:1".into(),
            queued_min_messages: 1234,
            ..KafkaConfig::default()
        };
        let c = consumer_config(&k, "g", Some("i"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:1"));
        assert_eq!(c.get("queued.min.messages"), Some("1234"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("group.instance.id"), Some("i"));
        assert_eq!(
            consumer_config(&k, "g", None).get("group.instance.id"),
            None
        );
    }
}
