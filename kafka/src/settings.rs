//! One librdkafka configuration for every Tally consumer.
//!
//! Offsets are Tally's own (Redis for the speed layer, progress objects for
//! the archiver): nothing is auto-committed or auto-stored, and a partition
//! without a committed offset starts at the earliest record (the layers seek
//! to where they really start). Reaching the end of a partition's log is
//! reported (`enable.partition.eof`): that is how a stored position beyond
//! the end is noticed (see [`crate::resume`]). Fetching is tuned by the `[kafka]` section:
//! the defaults come from the drain benchmark (see `BENCHMARKS.md`).

use rdkafka::config::ClientConfig;
use tally_core::config::KafkaConfig;
use tally_core::kafka_security::KafkaSecurity;

/// How long a group member may go silent before the group hands its
/// partitions to the others.
pub(crate) const SESSION_TIMEOUT_MS: u32 = 10_000;

/// How often a member tells the group it is alive: well inside the session.
pub(crate) const HEARTBEAT_INTERVAL_MS: u32 = 1_000;

/// The brokers and how to reach them (TLS, SASL): the base of every client.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    secure(&mut c, &kafka.security);
    c
}

fn secure(c: &mut ClientConfig, s: &KafkaSecurity) {
    c.set("security.protocol", s.protocol.as_librdkafka());
    let files = [
        ("ssl.ca.location", &s.ca_file),
        ("ssl.certificate.location", &s.cert_file),
        ("ssl.key.location", &s.key_file),
        ("sasl.username", &s.sasl_username),
    ];
    for (key, value) in files {
        if let Some(v) = value {
            c.set(key, v);
        }
    }
    if let Some(p) = &s.key_password {
        c.set("ssl.key.password", p.expose());
    }
    if let Some(m) = s.sasl_mechanism {
        c.set("sasl.mechanism", m.as_librdkafka());
    }
    if let Some(p) = &s.sasl_password {
        c.set("sasl.password", p.expose());
    }
}

/// The settings of a consumer in `group`. `instance_id` makes it a static
/// member (`group.instance.id`): restarted under the same id, it takes its
/// partitions back at once instead of waiting for its old session to expire.
pub fn consumer_config(
    kafka: &KafkaConfig,
    group: &str,
    instance_id: Option<&str>,
) -> ClientConfig {
    let mut c = client_config(kafka);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
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
    use tally_core::kafka_security::{Protocol, SaslMechanism};
    use tally_core::secret::Secret;

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
        assert_eq!(c.get("enable.partition.eof"), Some("true"));
        assert_eq!(
            consumer_config(&k, "g", None).get("group.instance.id"),
            None
        );
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
    }

    fn scram() -> KafkaConfig {
        KafkaConfig {
            security: KafkaSecurity {
                protocol: Protocol::SaslSsl,
                sasl_mechanism: Some(SaslMechanism::ScramSha512),
                sasl_username: Some("tally".into()),
                sasl_password: Some(Secret::new("s3cret")),
                ..KafkaSecurity::default()
            },
            ..KafkaConfig::default()
        }
    }

    #[test]
    fn tls_and_sasl_settings_reach_librdkafka_under_its_names() {
        let c = consumer_config(&scram(), "g", None);
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.username"), Some("tally"));
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
    }

    /// librdkafka refuses `sasl_ssl` and SCRAM at client creation when it was
    /// built without OpenSSL: this fails if the `ssl` feature is dropped.
    #[test]
    fn librdkafka_is_built_with_tls_and_scram() {
        use rdkafka::consumer::BaseConsumer;
        let made: Result<BaseConsumer, _> = consumer_config(&scram(), "g", None).create();
        if let Err(e) = made {
            panic!("librdkafka refused TLS + SCRAM settings: {e}");
        }
    }
}
