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

use crate::view::{valid_name, ViewDef, ViewError};

mod alert;
mod lookup;
mod sections;
mod units;

pub use alert::{AlertRule, AlertingConfig, Comparison};
pub use lookup::{LookupConfig, LookupFormat};

pub use sections::{
    redact_url, ArchiveConfig, Assignment, BatchConfig, EpochConfig, EventsConfig, KafkaConfig,
    RedisConfig, RedisMode, ServeConfig, SpeedConfig, StoreConfig, CLUSTER_PARTITION_GROUPS,
    EVICTION_POLICIES, MIN_TOKEN_LEN,
};
pub use units::{ByteSize, Millis};

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
    /// `[[lookup]]`: tables queries may map a dimension through.
    #[serde(rename = "lookup")]
    pub lookups: Vec<LookupConfig>,
    /// `[[alert]]`: threshold rules the serving role evaluates.
    #[serde(rename = "alert")]
    pub alerts: Vec<AlertRule>,
    pub alerting: AlertingConfig,
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
        match (self.kafka.assignment, self.kafka.partitions.as_slice()) {
            (Assignment::Partitions, []) => {
                return invalid(
                    "kafka.partitions",
                    "list the partitions this process reads, e.g. partitions = [0, 1] (assignment = \"partitions\")".into(),
                );
            }
            (Assignment::Partitions, ps) => {
                let mut seen = std::collections::BTreeSet::new();
                if let Some(p) = ps.iter().find(|&&p| p < 0 || !seen.insert(p)) {
                    return invalid(
                        "kafka.partitions",
                        format!("partition {p} is negative or listed twice: list each partition number once"),
                    );
                }
            }
            (_, []) => {}
            (_, _) => {
                return invalid(
                    "kafka.partitions",
                    "is read only with assignment = \"partitions\": set that, or remove the list"
                        .into(),
                );
            }
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
        let redis_url = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
        if !redis_url(&self.redis.url) {
            return invalid(
                "redis.url",
                format!(
                    "`{}` must start with redis:// or rediss://",
                    redact_url(&self.redis.url)
                ),
            );
        }
        match (self.redis.mode, self.redis.nodes.as_slice()) {
            (RedisMode::Single, []) => {}
            (RedisMode::Single, _) => {
                return invalid(
                    "redis.nodes",
                    "is read only with mode = \"cluster\": set that, or remove the list (a single Redis is `redis.url`)".into(),
                );
            }
            (RedisMode::Cluster, []) => {
                return invalid(
                    "redis.nodes",
                    "list a few of the cluster's nodes, e.g. nodes = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"] (mode = \"cluster\")".into(),
                );
            }
            (RedisMode::Cluster, nodes) => {
                if let Some(n) = nodes.iter().find(|n| !redis_url(n)) {
                    return invalid(
                        "redis.nodes",
                        format!("`{}` must start with redis:// or rediss://", redact_url(n)),
                    );
                }
            }
        }
        if self.redis.partition_groups == Some(0) {
            return invalid(
                "redis.partition_groups",
                format!("must be 1 or more (unset: 1 for a single Redis, {CLUSTER_PARTITION_GROUPS} for a cluster)"),
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
        if self.speed.dedup_window == 0 && self.views.iter().any(|v| v.dedups()) {
            return invalid(
                "speed.dedup_window",
                "must be more than 0 when a view has dedup = \"event_id\", e.g. 1000000".into(),
            );
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
        lookup::validate_all(&self.lookups)?;
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
        let lookups: Vec<String> = self.lookups.iter().map(|l| l.name.clone()).collect();
        alert::validate_all(
            &self.alerting,
            &self.alerts,
            &self.views,
            &lookups,
            self.serve.max_buckets,
        )?;
        Ok(())
    }

    pub fn view(&self, name: &str) -> Option<&ViewDef> {
        self.views.iter().find(|v| v.name == name)
    }

    pub fn lookup(&self, name: &str) -> Option<&LookupConfig> {
        self.lookups.iter().find(|l| l.name == name)
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
    fn listed_partitions_need_their_mode_and_each_number_once() {
        let views = "[[view]]\nname = \"v\"\ngranularity = \"1m\"\nmeasures = [{ name = \"n\", agg = \"count\" }]\n";
        let with = |kafka: &str| Config::from_toml(&format!("[kafka]\n{kafka}\n{views}"));
        let ok = with("assignment = \"partitions\"\npartitions = [0, 2, 4]").unwrap();
        assert_eq!(ok.kafka.assignment, Assignment::Partitions);
        assert_eq!(ok.kafka.partitions, vec![0, 2, 4]);
        for bad in [
            "assignment = \"partitions\"",
            "assignment = \"partitions\"\npartitions = [1, 1]",
            "assignment = \"partitions\"\npartitions = [-1]",
            "assignment = \"all\"\npartitions = [0]",
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("kafka.partitions"), "{bad}: {e}");
        }
    }

    #[test]
    fn cluster_mode_needs_seed_nodes_and_groups_at_least_one() {
        let views = "[[view]]\nname = \"v\"\ngranularity = \"1m\"\nmeasures = [{ name = \"n\", agg = \"count\" }]\n";
        let with = |redis: &str| Config::from_toml(&format!("[redis]\n{redis}\n{views}"));
        let single = with("").unwrap();
        assert_eq!(single.redis.mode, RedisMode::Single);
        assert_eq!(single.redis.groups(), 1);
        assert_eq!(single.redis.layout().keys(0).offsets(), "tally:off");
        let cluster = with("mode = \"cluster\"\nnodes = [\"redis://h:7000\"]").unwrap();
        assert_eq!(cluster.redis.groups(), CLUSTER_PARTITION_GROUPS);
        assert_eq!(cluster.redis.layout().keys(3).offsets(), "tally:{3}:off");
        let grouped = with("partition_groups = 4").unwrap();
        assert_eq!(grouped.redis.layout().keys_of(6).offsets(), "tally:{2}:off");
        let one = with("mode = \"cluster\"\nnodes = [\"redis://h:7000\"]\npartition_groups = 1");
        assert_eq!(
            one.unwrap().redis.layout().keys(0).offsets(),
            "tally:{0}:off"
        );
        for (bad, field, hint) in [
            ("mode = \"cluster\"", "redis.nodes", "nodes = ["),
            (
                "nodes = [\"redis://h:7000\"]",
                "redis.nodes",
                "mode = \"cluster\"",
            ),
            (
                "mode = \"cluster\"\nnodes = [\"h:7000\"]",
                "redis.nodes",
                "redis://",
            ),
            (
                "partition_groups = 0",
                "redis.partition_groups",
                "1 or more",
            ),
            ("mode = \"shards\"", "redis.mode", "cluster"),
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(hint), "{bad}: {e}");
        }
        let cfg = RedisConfig {
            nodes: vec!["redis://tally:s3cret@h:7000".into()],
            ..RedisConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn defaults_are_sane() {
        let c = Config::default();
        assert_eq!(c.epochs.grid().len_ms, 3_600_000);
        assert_eq!(c.speed.flush_interval, Millis(100));
        assert_eq!(String::from(Millis(100)), "100ms");
    }
}
