//! The standard test config: one place for the `tally.toml` the tests and
//! benchmarks use, so they all exercise the same views. The standard views
//! cover every aggregate at three granularities:
//!
//! - `page_views` (1m): `page_view` events by `properties.page`; `views`
//!   count, `duration` sum, `shortest` min, `longest` max (integer
//!   `properties.duration`), `scroll` sum (float `properties.scroll`),
//!   `users` distinct `user_id`, `latency` quantiles of the float
//!   `properties.latency_ms` (0.1 ms to 10 s).
//! - `by_type` (1h): all events by `event_type` and `properties.country`;
//!   `events` count, `amount` sum (integer `properties.amount`), `users`
//!   distinct.
//! - `daily` (1d): no dimensions; `events` count, `timed` count of
//!   `properties.duration`, `top` max of `properties.amount`, `deepest` max
//!   of `properties.scroll`, `durations` quantiles of the integer
//!   `properties.duration`.

use tally_core::config::Config;

/// The topic the standard config reads.
pub const TOPIC: &str = "events";

/// The standard views, as TOML (see the module doc).
pub const STANDARD_VIEWS: &str = r#"
[[view]]
name = "page_views"
filter = { event_type = ["page_view"] }
dimensions = ["properties.page"]
granularity = "1m"
measures = [
  { name = "views", agg = "count" },
  { name = "duration", agg = "sum", field = "properties.duration" },
  { name = "shortest", agg = "min", field = "properties.duration" },
  { name = "longest", agg = "max", field = "properties.duration" },
  { name = "scroll", agg = "sum", field = "properties.scroll" },
  { name = "users", agg = "distinct", field = "user_id" },
  { name = "latency", agg = "quantiles", field = "properties.latency_ms" },
]
[[view]]
name = "by_type"
dimensions = ["event_type", "properties.country"]
granularity = "1h"
measures = [
  { name = "events", agg = "count" },
  { name = "amount", agg = "sum", field = "properties.amount" },
  { name = "users", agg = "distinct", field = "user_id" },
]
[[view]]
name = "daily"
granularity = "1d"
measures = [
  { name = "events", agg = "count" },
  { name = "timed", agg = "count", field = "properties.duration" },
  { name = "top", agg = "max", field = "properties.amount" },
  { name = "deepest", agg = "max", field = "properties.scroll" },
  { name = "durations", agg = "quantiles", field = "properties.duration" },
]
"#;

/// A view that counts each event_id once per event-time day (`dedup =
/// "event_id"`), to add to the standard views: `once` (1m), every event by
/// `properties.page`; `events` count, `duration` sum, `longest` max,
/// `users` distinct.
pub const DEDUP_VIEW: &str = r#"
[[view]]
name = "once"
dedup = "event_id"
dimensions = ["properties.page"]
granularity = "1m"
measures = [
  { name = "events", agg = "count" },
  { name = "duration", agg = "sum", field = "properties.duration" },
  { name = "longest", agg = "max", field = "properties.duration" },
  { name = "users", agg = "distinct", field = "user_id" },
]
"#;

/// The drain benchmarks' two views (`benches/speed_drain.rs` and
/// `benches/archive_drain.rs` drain the same topic into them, so their
/// figures compare): `page_views` (1m) of `page_view` events by
/// `properties.page`, `views` count, `duration` sum, `longest` max, `users`
/// distinct; `by_type` (1m), every event's count by `event_type`.
pub const DRAIN_VIEWS: &str = r#"
[[view]]
name = "page_views"
filter = { event_type = ["page_view"] }
dimensions = ["properties.page"]
granularity = "1m"
measures = [
  { name = "views", agg = "count" },
  { name = "duration", agg = "sum", field = "properties.duration" },
  { name = "longest", agg = "max", field = "properties.duration" },
  { name = "users", agg = "distinct", field = "user_id" },
]
[[view]]
name = "by_type"
dimensions = ["event_type"]
granularity = "1m"
measures = [{ name = "events", agg = "count" }]
"#;

/// A test config under construction. Defaults: brokers `127.0.0.1:9092`,
/// Redis `redis://127.0.0.1:6379` with key prefix `t`, store `memory://`,
/// group `tally-test`, topic [`TOPIC`], dead letters to `dead`, a 100 ms
/// flush interval, and [`STANDARD_VIEWS`].
#[derive(Debug, Clone)]
pub struct TestConfig {
    pub brokers: String,
    pub redis: String,
    pub key_prefix: String,
    /// More `[redis]` lines (`mode`, `nodes`, `partition_groups`).
    pub redis_lines: String,
    pub store: String,
    pub group: String,
    pub topic: String,
    pub dead_letter_topic: String,
    /// More sections (`[batch]`, `[events]`, ...), placed before the views.
    pub extra: String,
    pub views: String,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            brokers: "127.0.0.1:9092".into(),
            redis: "redis://127.0.0.1:6379".into(),
            key_prefix: "t".into(),
            redis_lines: String::new(),
            store: "memory://".into(),
            group: "tally-test".into(),
            topic: TOPIC.into(),
            dead_letter_topic: "dead".into(),
            extra: String::new(),
            views: STANDARD_VIEWS.into(),
        }
    }
}

impl TestConfig {
    pub fn new() -> TestConfig {
        TestConfig::default()
    }

    pub fn brokers(mut self, brokers: &str) -> Self {
        self.brokers = brokers.into();
        self
    }

    pub fn redis(mut self, url: &str) -> Self {
        self.redis = url.into();
        self
    }

    /// Add `[redis]` lines, e.g. [`crate::RedisCluster::config_lines`].
    pub fn redis_lines(mut self, lines: &str) -> Self {
        self.redis_lines.push('\n');
        self.redis_lines.push_str(lines);
        self
    }

    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    pub fn store(mut self, url: &str) -> Self {
        self.store = url.into();
        self
    }

    pub fn group(mut self, group: &str) -> Self {
        self.group = group.into();
        self
    }

    /// Append TOML sections (placed before the views).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push('\n');
        self.extra.push_str(toml);
        self
    }

    /// Replace the standard views with `toml` (`[[view]]` tables).
    pub fn views(mut self, toml: &str) -> Self {
        self.views = toml.into();
        self
    }

    /// The config as TOML text, for the `tally` binary.
    pub fn toml(&self) -> String {
        let TestConfig {
            brokers,
            redis,
            key_prefix,
            redis_lines,
            store,
            group,
            topic,
            dead_letter_topic,
            extra,
            views,
        } = self;
        format!(
            r#"[kafka]
brokers = "{brokers}"
topics = ["{topic}"]
group = "{group}"
dead_letter_topic = "{dead_letter_topic}"
[redis]
url = "{redis}"
key_prefix = "{key_prefix}"{redis_lines}
[store]
url = "{store}"
[speed]
flush_interval = "100ms"
{extra}
{views}"#
        )
    }

    /// The config, parsed and validated (panics on a bad test config).
    pub fn build(&self) -> Config {
        Config::from_toml(&self.toml())
            .unwrap_or_else(|e| panic!("test config: {e}\n{}", self.toml()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_config_validates() {
        let cfg = TestConfig::new()
            .store("file:///tmp/x")
            .extra("[batch]\ngc_grace = \"0ms\"")
            .build();
        assert_eq!(cfg.views.len(), 3);
        assert_eq!(cfg.kafka.topics, vec![TOPIC.to_string()]);
        assert_eq!(cfg.batch.gc_grace.0, 0);
    }
}
