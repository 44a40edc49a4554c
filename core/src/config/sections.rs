//! The sections of `tally.toml`, one struct each, with their defaults and
//! the checks that belong to one section alone.

use serde::{Deserialize, Serialize};

use super::units::{ByteSize, Millis};
use super::ConfigError;
use crate::event::Limits;
use crate::kafka_security::KafkaSecurity;
use crate::keys::Layout;
use crate::secret::Secret;
use crate::time::EpochGrid;

/// How a process gets its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    Group,
    All,
    Partitions,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Topics the views read from.
    pub topics: Vec<String>,
    /// Consumer group of the speed layer; the archiver uses `<group>-archive`.
    pub group: String,
    /// Static group membership (`group.instance.id`): a restarted process with
    /// the same id takes its partitions back at once instead of waiting for the
    /// broker to expire its previous session. Unique per process. The
    /// archiver's group gets `<instance_id>-archive`.
    pub instance_id: Option<String>,
    /// `group`: partitions are shared by the consumer group (scale-out), for
    /// the speed layer and the archiver alike (`<group>-archive`).
    /// `all`: this process reads every partition itself, no group coordination
    /// (one process, or several racing safely: the offset fence keeps counts
    /// exact; an archiver whose claim on a partition is taken over stops
    /// archiving it). Tansu 0.6 does not hand a SIGKILLed member's partitions
    /// back to the group, so on Tansu a single process with `all` survives
    /// crashes.
    /// `partitions`: this process reads the partitions listed in
    /// `partitions`, of every topic, and no others, with no group
    /// coordination: N speed processes and N archivers split a topic by
    /// their lists, on any broker (as Flink's and Spark's Kafka sources can).
    /// Lists may overlap: the offset fence and the archive's claims keep
    /// that exact.
    pub assignment: Assignment,
    /// The partition numbers read with `assignment = "partitions"`, e.g.
    /// `[0, 1, 2, 3]`.
    pub partitions: Vec<i32>,
    /// Where records that fail validation go, with the reason in headers.
    pub dead_letter_topic: String,
    /// How far before a stored offset to seek on resume (Tansu skips the rest of
    /// the record batch holding the requested offset). At least the largest
    /// producer batch.
    pub seek_back: i64,
    /// librdkafka `fetch.wait.max.ms`.
    pub fetch_wait_max_ms: u32,
    /// librdkafka `queued.min.messages`, per partition. The drain benchmark
    /// picked 50,000: 20,000 starved the consume thread (75% busy), 200,000
    /// was no faster and held 190 MiB.
    pub queued_min_messages: u32,
    /// librdkafka `queued.max.messages.kbytes`: the prefetch cap whatever the
    /// partition count, and most of the process's memory.
    pub queued_max_messages_kbytes: u32,
    /// librdkafka `max.partition.fetch.bytes`.
    pub max_partition_fetch_bytes: u32,
    /// librdkafka `fetch.queue.backoff.ms`: how long fetching pauses once the
    /// local queue is over `queued_min_messages`. librdkafka's 1 s default
    /// left a consumer that decodes and folds idle half of the time while
    /// draining a backlog (the queue empties long before the pause ends).
    pub fetch_queue_backoff_ms: u32,
    /// `[kafka.security]`: TLS and SASL towards the brokers.
    pub security: KafkaSecurity,
}

impl KafkaConfig {
    /// The partitions `assignment = "partitions"` lists; `None` otherwise.
    pub fn listed_partitions(&self) -> Option<&[i32]> {
        (self.assignment == Assignment::Partitions).then_some(self.partitions.as_slice())
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topics: vec!["events".into()],
            group: "tally".into(),
            instance_id: None,
            assignment: Assignment::Group,
            partitions: Vec::new(),
            dead_letter_topic: "tally-dead-letters".into(),
            seek_back: 10_000,
            fetch_wait_max_ms: 5,
            queued_min_messages: 50_000,
            queued_max_messages_kbytes: 65_536,
            max_partition_fetch_bytes: 8 * 1024 * 1024,
            fetch_queue_backoff_ms: 10,
            security: KafkaSecurity::default(),
        }
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `single`: one Redis at [`RedisConfig::url`]; `cluster`: a Redis
    /// Cluster reached through [`RedisConfig::nodes`].
    pub mode: RedisMode,
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. The
    /// password never appears in logs or errors: see [`redact_url`]. Single
    /// mode only.
    pub url: String,
    /// Cluster mode: seed nodes (`redis://host:port`, any few of the
    /// cluster's nodes); the client discovers the rest.
    pub nodes: Vec<String>,
    /// How many key groups the Kafka partitions are spread over: partition
    /// `p` (of any topic) belongs to group `p mod partition_groups`, and each
    /// group's keys share one hash tag, so one Redis Cluster slot. Unset: 1 in
    /// single mode (today's untagged keys), 16 in cluster mode. Changing it
    /// under existing data needs the prefix's keys deleted (see
    /// docs/OPERATIONS.md).
    pub partition_groups: Option<u32>,
    /// Prefix of every key Tally writes.
    pub key_prefix: String,
    /// The `maxmemory-policy` other than `noeviction` the speed layer may run
    /// on (one of [`EVICTION_POLICIES`]), or `"any"` to skip the check (for
    /// servers that refuse `CONFIG GET`). Unset, the speed layer refuses to
    /// start on a Redis that evicts keys: an evicted offset rebuilds counters
    /// that stayed (counted twice), an evicted counter under a kept offset is
    /// lost silently.
    pub accept_maxmemory_policy: Option<String>,
}

/// Redis's `maxmemory-policy` values that evict keys: all but `noeviction`.
pub const EVICTION_POLICIES: [&str; 7] = [
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
];

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|n| redact_url(n)).collect();
        f.debug_struct("RedisConfig")
            .field("mode", &self.mode)
            .field("url", &redact_url(&self.url))
            .field("nodes", &nodes)
            .field("partition_groups", &self.partition_groups)
            .field("key_prefix", &self.key_prefix)
            .field("accept_maxmemory_policy", &self.accept_maxmemory_policy)
            .finish()
    }
}

/// `url` with the password of its user info replaced by `***`
/// (`redis://tally:s3cret@host:6379` -> `redis://tally:***@host:6379`), for
/// anything that prints a URL: logs, errors, `tally check`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user info ends at the last `@` before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if scheme.starts_with("redis") => "***".to_owned(), // `redis://:pw@` or a bare password
        None => rest[..at].to_owned(),
    };
    format!("{scheme}://{user}{}", &rest[at..])
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            mode: RedisMode::Single,
            url: "redis://127.0.0.1:6379".into(),
            nodes: Vec::new(),
            partition_groups: None,
            key_prefix: "tally".into(),
            accept_maxmemory_policy: None,
        }
    }
}

/// How Tally reaches Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    Single,
    Cluster,
}

/// Partition groups in cluster mode when `partition_groups` is unset.
pub const CLUSTER_PARTITION_GROUPS: u32 = 16;

impl RedisConfig {
    /// The number of partition groups in effect.
    pub fn groups(&self) -> u32 {
        match (self.partition_groups, self.mode) {
            (Some(g), _) => g.max(1),
            (None, RedisMode::Single) => 1,
            (None, RedisMode::Cluster) => CLUSTER_PARTITION_GROUPS,
        }
    }

    /// Where each partition group's keys live. Keys carry a hash tag unless
    /// this is one Redis with one group (today's layout, kept as it was).
    pub fn layout(&self) -> Layout {
        let groups = self.groups();
        Layout::new(
            &self.key_prefix,
            groups,
            self.mode == RedisMode::Cluster || groups > 1,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `file:///abs/path`, `file://relative/path`, `s3://bucket/prefix` or `memory://`.
    pub url: String,
    /// S3 endpoint for S3-compatible servers (MinIO, moto); AWS when empty.
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "file://./tally-data".into(),
            s3_endpoint: None,
            s3_region: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    pub max_bytes: usize,
    /// How long before its Kafka timestamp an event may be stamped.
    pub max_past: Millis,
    /// How long after its Kafka timestamp an event may be stamped.
    pub max_future: Millis,
}

impl Default for EventsConfig {
    fn default() -> Self {
        let l = Limits::default();
        EventsConfig {
            max_bytes: l.max_bytes,
            max_past: Millis(l.max_past_ms),
            max_future: Millis(l.max_future_ms),
        }
    }
}

impl EventsConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.max_bytes,
            max_past_ms: self.max_past.0,
            max_future_ms: self.max_future.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpochConfig {
    /// Length of an ingest epoch.
    pub length: Millis,
    /// How long after an epoch ends the archiver waits before declaring it complete.
    pub grace: Millis,
    /// How long a speed-layer slice lives after its last write (and after its
    /// epoch ends). Slices at or above the snapshot cut are renewed, so only
    /// slices the batch covers expire (`tally_speed::keepalive`).
    pub retention: Millis,
}

impl Default for EpochConfig {
    fn default() -> Self {
        EpochConfig {
            length: Millis(3_600_000),
            grace: Millis(300_000),
            retention: Millis(3 * 86_400_000),
        }
    }
}

impl EpochConfig {
    /// The epochs these settings cut time into.
    pub fn grid(&self) -> EpochGrid {
        EpochGrid::new(self.length.0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeedConfig {
    pub flush_interval: Millis,
    /// Chunks (not records) waiting between the consume thread and the
    /// flusher before consumption pauses. A chunk is the aggregates of every
    /// partition since the last one: at most 50,000 (slice, bucket, group)
    /// cells or 2,000,000 events. A new chunk is cut only once the flusher has
    /// taken the last, unless it reached that size, so the queue fills only
    /// while Redis falls behind.
    pub queue_capacity: usize,
    /// Prometheus metrics listener of the standalone `tally speed`; none when empty.
    pub metrics_listen: Option<String>,
    /// With views that have `dedup = "event_id"`: how many (event_id, day)
    /// keys a speed process remembers (the last half to all of this many,
    /// shared by those views): a retry whose first copy is further back is
    /// counted until the batch covers it. 64 bytes each, allocated at start;
    /// nothing is kept when no view dedups.
    pub dedup_window: usize,
}

impl Default for SpeedConfig {
    fn default() -> Self {
        SpeedConfig {
            flush_interval: Millis(100),
            queue_capacity: 64,
            metrics_listen: None,
            dedup_window: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Roll a partition's files once they hold this many bytes of raw
    /// records. A partition holds up to twice this in memory: one roll
    /// being written while the next fills.
    pub roll_bytes: usize,
    /// Roll a file once it is this old.
    pub roll_interval: Millis,
    /// Prometheus metrics listener of the standalone `tally archive`; none when empty.
    pub metrics_listen: Option<String>,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            roll_bytes: 128 * 1024 * 1024,
            roll_interval: Millis(60_000),
            metrics_listen: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Cron expression with seconds (`sec min hour day month weekday`), UTC.
    pub schedule: String,
    /// How long superseded snapshot runs are kept before garbage collection.
    pub gc_grace: Millis,
    /// How long a batch lock is honoured without renewal.
    pub lock_ttl: Millis,
    /// Prometheus metrics listener of the standalone `tally batch`; none when empty.
    pub metrics_listen: Option<String>,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            schedule: "0 0 2 * * *".into(),
            gc_grace: Millis(3_600_000),
            lock_ttl: Millis(3_600_000),
            metrics_listen: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    pub listen: String,
    /// Bearer token for admin calls (recompute). Admin calls are refused without one.
    pub admin_token: Option<Secret>,
    /// Bearer token for reads; reads are open when empty.
    pub read_token: Option<Secret>,
    /// Most output buckets one query may ask for.
    pub max_buckets: usize,
    /// Most groups an answer lists (the largest by the first measure; the
    /// totals still cover every group).
    pub max_groups: usize,
    /// Most (bucket, group) cells one answer may hold: a query over that
    /// is refused with `too_many_cells` (400), whatever its split between
    /// buckets and groups.
    pub max_cells: usize,
    /// Most `filter` values in one query.
    pub max_filters: usize,
    /// Most server-sent-event streams open at once (then 429).
    pub max_streams: usize,
    pub request_timeout: Millis,
    /// Memory for snapshot data (decoded day files, read on demand from the
    /// store): the least recently used are dropped past it.
    pub cache_bytes: ByteSize,
    /// How long a whole answer is reused for the same query; `0ms` (the
    /// default) turns the answer cache off.
    pub answer_ttl: Millis,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:8080".into(),
            admin_token: None,
            read_token: None,
            max_buckets: 10_000,
            max_groups: 1_000,
            max_cells: 500_000,
            max_filters: 100,
            max_streams: 256,
            request_timeout: Millis(10_000),
            cache_bytes: ByteSize(256 << 20),
            answer_ttl: Millis(0),
        }
    }
}

/// The shortest bearer token accepted: short ones are guessed.
pub const MIN_TOKEN_LEN: usize = 16;

impl ServeConfig {
    /// The `[serve]` rules types alone cannot state; the error names the field.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, problem: &str| {
            Err(ConfigError::Invalid {
                field: format!("serve.{field}"),
                problem: problem.into(),
            })
        };
        if self.cache_bytes.0 < 1 << 20 {
            return invalid(
                "cache_bytes",
                "must be at least 1MiB: snapshot data is read through this cache, e.g. cache_bytes = \"256MiB\"",
            );
        }
        for (field, value) in [
            ("max_buckets", self.max_buckets),
            ("max_groups", self.max_groups),
            ("max_cells", self.max_cells),
            ("max_filters", self.max_filters),
            ("max_streams", self.max_streams),
        ] {
            if value == 0 {
                return invalid(field, "must be at least 1");
            }
        }
        let tokens = [
            ("admin_token", &self.admin_token),
            ("read_token", &self.read_token),
        ];
        for (field, token) in tokens {
            if token
                .as_ref()
                .is_some_and(|t| t.expose().trim().len() < MIN_TOKEN_LEN)
            {
                return invalid(
                    field,
                    "a token needs at least 16 characters (an empty one would let anyone \
                     in): generate one with `openssl rand -hex 32`, or remove the key",
                );
            }
        }
        if self.request_timeout.0 <= 0 {
            return invalid("request_timeout", "must be more than 0, e.g. 10s");
        }
        if self.answer_ttl.0 < 0 {
            return invalid("answer_ttl", "must be 0ms (off) or more, e.g. 250ms");
        }
        Ok(())
    }
}
