//! `tally.toml`: the one configuration every role reads.
//!
//! Layers, last wins: built-in defaults, the file, then `TALLY_<SECTION>__<KEY>`
//! environment variables (`TALLY_REDIS__URL=redis://…`). Unknown keys are errors,
//! so a typo never silently becomes a default. [`Config::load`] returns a config
//! that has passed [`Config::validate`]: every error names the field and says
//! what is allowed.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::event::Limits;
use crate::kafka_security::KafkaSecurity;
use crate::secret::Secret;
use crate::time::{format_ms, parse_duration_ms, EpochGrid};
use crate::view::{valid_name, ViewDef, ViewError};

/// A duration written as text in the config (`100ms`, `5m`, `1d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Millis(pub i64);

impl TryFrom<String> for Millis {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_duration_ms(&s)
            .map(Millis)
            .ok_or_else(|| format!("`{s}` is not a duration: use a number and a unit (ms, s, m, h, d), like 100ms or 5m"))
    }
}

impl From<Millis> for String {
    fn from(m: Millis) -> String {
        format_ms(m.0)
    }
}

impl Millis {
    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }
}

/// How a process gets its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    Group,
    All,
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
    pub assignment: Assignment,
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

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topics: vec!["events".into()],
            group: "tally".into(),
            instance_id: None,
            assignment: Assignment::Group,
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
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. The
    /// password never appears in logs or errors: see [`redact_url`].
    pub url: String,
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
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
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
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "tally".into(),
            accept_maxmemory_policy: None,
        }
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
}

impl Default for SpeedConfig {
    fn default() -> Self {
        SpeedConfig {
            flush_interval: Millis(100),
            queue_capacity: 64,
            metrics_listen: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Roll a file once it holds this many bytes of raw records.
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

/// A size in bytes written as text in the config (`256MiB`, `1GiB`, `500MB`)
/// or as a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "ByteText", into = "String")]
pub struct ByteSize(pub u64);

/// What a [`ByteSize`] may be written as.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ByteText {
    Number(u64),
    Text(String),
}

impl TryFrom<ByteText> for ByteSize {
    type Error = String;
    fn try_from(t: ByteText) -> Result<Self, String> {
        let s = match t {
            ByteText::Number(n) => return Ok(ByteSize(n)),
            ByteText::Text(s) => s,
        };
        let text = s.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (num, unit) = text.split_at(split);
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" => 1000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            _ => 0,
        };
        num.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .filter(|_| mult > 0)
            .map(ByteSize)
            .ok_or_else(|| {
                format!("`{s}` is not a size: use a number and a unit (B, KiB, MiB, GiB, KB, MB, GB), like 256MiB")
            })
    }
}

impl From<ByteSize> for String {
    fn from(b: ByteSize) -> String {
        for (unit, mult) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if b.0 != 0 && b.0.is_multiple_of(mult) {
                return format!("{}{unit}", b.0 / mult);
            }
        }
        format!("{}B", b.0)
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
    fn validate(&self) -> Result<(), ConfigError> {
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

/// The whole `tally.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub store: StoreConfig,
    pub events: EventsConfig,
    pub epochs: EpochConfig,
    pub speed: SpeedConfig,
    pub archive: ArchiveConfig,
    pub batch: BatchConfig,
    pub serve: ServeConfig,
    #[serde(rename = "view")]
    pub views: Vec<ViewDef>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config file {0} does not exist: pass --config PATH or create it (see tally.example.toml)"
    )]
    Missing(String),
    #[error("{0}")]
    Parse(String),
    #[error("`{field}`: {problem}")]
    Invalid { field: String, problem: String },
    #[error(transparent)]
    View(#[from] ViewError),
}

impl Config {
    /// Load `path` with environment overrides, then validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Missing(path.display().to_string()));
        }
        Self::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::file(path)),
        )
    }

    /// Parse TOML text (no environment), then validate. For tests and `check`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Parse(describe(e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_figment(f: Figment) -> Result<Config, ConfigError> {
        let cfg: Config = f
            // Only TALLY_<SECTION>__<KEY>: other TALLY_* variables (TALLY_CONFIG,
            // the infra scripts' TALLY_CACHE, ...) are not config overrides.
            .merge(
                Env::prefixed("TALLY_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .extract()
            .map_err(|e| ConfigError::Parse(describe(e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check cross-field rules that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, problem: String| {
            Err(ConfigError::Invalid {
                field: field.into(),
                problem,
            })
        };
        if self.kafka.topics.is_empty() {
            return invalid(
                "kafka.topics",
                "list at least one topic, e.g. topics = [\"events\"]".into(),
            );
        }
        if self.kafka.brokers.trim().is_empty() {
            return invalid(
                "kafka.brokers",
                "set the bootstrap servers, e.g. \"127.0.0.1:9092\"".into(),
            );
        }
        if self.kafka.seek_back < 0 {
            return invalid("kafka.seek_back", "must be 0 or more (records)".into());
        }
        if let Err(e) = self.kafka.security.validate() {
            return invalid(&format!("kafka.security.{}", e.field), e.problem);
        }
        if !valid_name(&self.redis.key_prefix) {
            return invalid(
                "redis.key_prefix",
                "use 1-64 letters, digits, `_` or `-`".into(),
            );
        }
        if !self.redis.url.starts_with("redis://") && !self.redis.url.starts_with("rediss://") {
            return invalid(
                "redis.url",
                format!(
                    "`{}` must start with redis:// or rediss://",
                    redact_url(&self.redis.url)
                ),
            );
        }
        if let Some(p) = &self.redis.accept_maxmemory_policy {
            if p != "any" && !EVICTION_POLICIES.contains(&p.as_str()) {
                return invalid(
                    "redis.accept_maxmemory_policy",
                    format!(
                        "`{p}` is not a Redis policy that evicts keys: use one of {}, or \"any\" to skip the check; leave it unset for `noeviction`",
                        EVICTION_POLICIES.join(", ")
                    ),
                );
            }
        }
        let scheme_ok = ["file://", "s3://", "memory://"]
            .iter()
            .any(|s| self.store.url.starts_with(s));
        if !scheme_ok {
            return invalid(
                "store.url",
                format!(
                    "`{}` has an unknown scheme: use file://PATH, s3://BUCKET/PREFIX or memory://",
                    self.store.url
                ),
            );
        }
        if self.epochs.length.0 < 1000 || crate::time::MS_PER_DAY % self.epochs.length.0 != 0 {
            return invalid(
                "epochs.length",
                "must be at least 1s and divide a day, e.g. 1h".into(),
            );
        }
        if self.events.max_bytes == 0 {
            return invalid("events.max_bytes", "must be more than 0".into());
        }
        if self.speed.flush_interval.0 <= 0 {
            return invalid(
                "speed.flush_interval",
                "must be more than 0, e.g. 100ms".into(),
            );
        }
        if self.speed.queue_capacity == 0 {
            return invalid("speed.queue_capacity", "must be more than 0".into());
        }
        if self.batch.schedule.split_whitespace().count() != 6 {
            return invalid(
                "batch.schedule",
                format!(
                    "`{}` must have 6 fields: sec min hour day month weekday, e.g. \"0 0 2 * * *\"",
                    self.batch.schedule
                ),
            );
        }
        self.serve.validate()?;
        if self.views.is_empty() {
            return invalid("view", "declare at least one [[view]]".into());
        }
        let mut names: Vec<&str> = Vec::new();
        for v in &self.views {
            if names.contains(&v.name.as_str()) {
                return Err(ViewError {
                    view: v.name.clone(),
                    field: "name".into(),
                    problem: "two views have this name: names must be unique".into(),
                }
                .into());
            }
            names.push(&v.name);
            v.validate(&self.kafka.topics)?;
        }
        Ok(())
    }

    pub fn view(&self, name: &str) -> Option<&ViewDef> {
        self.views.iter().find(|v| v.name == name)
    }
}

/// Figment's error with the key path it happened at, one line per error.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let kind = e.kind.to_string();
            if path.is_empty() {
                kind
            } else {
                format!("`{path}`: {kind}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_sizes_read_as_text_or_numbers_and_bad_values_name_the_field() {
        let views = "[[view]]\nname = \"v\"\ngranularity = \"1m\"\nmeasures = [{ name = \"n\", agg = \"count\" }]\n";
        let with = |serve: &str| Config::from_toml(&format!("[serve]\n{serve}\n{views}"));
        assert_eq!(
            with("cache_bytes = \"64MiB\"").unwrap().serve.cache_bytes,
            ByteSize(64 << 20)
        );
        assert_eq!(
            with("cache_bytes = 3000000").unwrap().serve.cache_bytes,
            ByteSize(3_000_000)
        );
        assert_eq!(String::from(ByteSize(256 << 20)), "256MiB");
        let e = with("cache_bytes = \"lots\"").unwrap_err().to_string();
        assert!(e.contains("cache_bytes") && e.contains("256MiB"), "{e}");
        let e = with("cache_bytes = \"1KiB\"").unwrap_err().to_string();
        assert!(e.contains("serve.cache_bytes") && e.contains("1MiB"), "{e}");
        let e = with("max_cells = 0").unwrap_err().to_string();
        assert!(e.contains("serve.max_cells"), "{e}");
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        for (url, want) in [
            (
                "redis://tally:s3cret@h:6379/0",
                "redis://tally:***@h:6379/0",
            ),
            ("rediss://:s3cret@h:6380", "rediss://:***@h:6380"),
            ("redis://s3cret@h", "redis://***@h"),
            ("redis://h:6379", "redis://h:6379"),
            ("redis://u:p@ss:w@rd@h/x@y", "redis://u:***@h/x@y"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
        let cfg = RedisConfig {
            url: "redis://tally:s3cret@h:6379".into(),
            ..RedisConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn only_an_evicting_policy_or_any_can_be_accepted() {
        let with = |p: &str| {
            Config::from_toml(&format!(
                "[redis]\naccept_maxmemory_policy = \"{p}\"\n[[view]]\nname = \"v\"\ndimensions = [\"event_type\"]\ngranularity = \"1m\"\nmeasures = [{{ name = \"n\", agg = \"count\" }}]\n"
            ))
        };
        for p in EVICTION_POLICIES.iter().chain(&["any"]) {
            let cfg = with(p).unwrap_or_else(|e| panic!("{p}: {e}"));
            assert_eq!(cfg.redis.accept_maxmemory_policy.as_deref(), Some(*p));
        }
        for p in ["noeviction", "allkeys_lru", "ALLKEYS-LRU", ""] {
            let e = with(p).unwrap_err().to_string();
            assert!(
                e.contains("redis.accept_maxmemory_policy") && e.contains("allkeys-lru"),
                "{p}: {e}"
            );
        }
        assert_eq!(Config::default().redis.accept_maxmemory_policy, None);
    }

    #[test]
    fn defaults_are_sane() {
        let c = Config::default();
        assert_eq!(c.epochs.grid().len_ms, 3_600_000);
        assert_eq!(c.speed.flush_interval, Millis(100));
        assert_eq!(String::from(Millis(100)), "100ms");
    }
}
