//! `[[alert]]` threshold rules and `[alerting]` (how their webhooks are
//! delivered), evaluated by the serving role.
//!
//! A rule's value is its measure's total over the trailing `window`
//! (filtered), read through the query API's own path; the rule fires when
//! `value <comparison> threshold` has held for `for` (at once without it),
//! and resolves when it no longer holds. Guarantee: [`validate_all`] names
//! the field (`alert.<name>.<field>`) and the fix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::units::Millis;
use super::ConfigError;
use crate::view::{valid_name, FieldPath, ViewDef};

/// How a value is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    #[serde(rename = ">")]
    Above,
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<")]
    Below,
    #[serde(rename = "<=")]
    AtMost,
}

impl Comparison {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Above => value > threshold,
            Comparison::AtLeast => value >= threshold,
            Comparison::Below => value < threshold,
            Comparison::AtMost => value <= threshold,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::Above => ">",
            Comparison::AtLeast => ">=",
            Comparison::Below => "<",
            Comparison::AtMost => "<=",
        }
    }
}

/// One threshold rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// 1-64 letters, digits, `_` or `-`.
    pub name: String,
    pub view: String,
    /// A measure of the view (count, sum, min, max or distinct).
    pub measure: String,
    /// Column → allowed values, as a query's `filter` (a column is a
    /// dimension or `dimension@lookup`).
    #[serde(default)]
    pub filter: BTreeMap<String, Vec<String>>,
    /// The trailing window the value covers, a multiple of the view's
    /// granularity, e.g. `5m`.
    pub window: Millis,
    /// `>`, `>=`, `<` or `<=`.
    pub comparison: Comparison,
    pub threshold: f64,
    /// How long the comparison must hold before the rule fires (optional).
    #[serde(default, rename = "for")]
    pub for_duration: Option<Millis>,
    /// Where firing and resolving notifications are POSTed (http or https).
    pub webhook: String,
}

/// `[alerting]`: the evaluation interval and webhook delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// How often every rule is evaluated.
    pub interval: Millis,
    /// Notifications waiting for delivery at most; past it new ones are
    /// dropped and counted (`tally_alert_deliveries_total{result="dropped"}`).
    pub queue: usize,
    /// Attempts per notification (the first and the retries).
    pub max_attempts: u32,
    /// The first retry's delay, doubled per retry up to `max_backoff`.
    pub backoff: Millis,
    pub max_backoff: Millis,
    /// How long one delivery attempt may take.
    pub timeout: Millis,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            interval: Millis(30_000),
            queue: 1_000,
            max_attempts: 10,
            backoff: Millis(500),
            max_backoff: Millis(60_000),
            timeout: Millis(5_000),
        }
    }
}

/// Check `[alerting]` and every rule against the views and lookups.
pub(super) fn validate_all(
    alerting: &AlertingConfig,
    rules: &[AlertRule],
    views: &[ViewDef],
    lookups: &[String],
    max_buckets: usize,
) -> Result<(), ConfigError> {
    let invalid = |field: String, problem: String| Err(ConfigError::Invalid { field, problem });
    for (field, ms) in [
        ("interval", alerting.interval),
        ("backoff", alerting.backoff),
        ("max_backoff", alerting.max_backoff),
        ("timeout", alerting.timeout),
    ] {
        if ms.0 <= 0 {
            return invalid(
                format!("alerting.{field}"),
                "must be more than 0, e.g. 30s".into(),
            );
        }
    }
    if alerting.queue == 0 || alerting.max_attempts == 0 {
        return invalid(
            "alerting.queue / alerting.max_attempts".into(),
            "must be at least 1".into(),
        );
    }
    for (i, r) in rules.iter().enumerate() {
        let field = |f: &str| format!("alert.{}.{f}", r.name);
        if !valid_name(&r.name) {
            return invalid(
                "alert.name".into(),
                format!(
                    "`{}` is not a valid alert name: use 1-64 letters, digits, `_` or `-`",
                    r.name
                ),
            );
        }
        if rules[..i].iter().any(|o| o.name == r.name) {
            return invalid(
                field("name"),
                "two alerts have this name: names must be unique".into(),
            );
        }
        let Some(view) = views.iter().find(|v| v.name == r.view) else {
            let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
            return invalid(
                field("view"),
                format!("there is no view `{}`; the views are {names:?}", r.view),
            );
        };
        match view.measure(&r.measure) {
            None => {
                let names: Vec<&str> = view.measures.iter().map(|m| m.name.as_str()).collect();
                return invalid(
                    field("measure"),
                    format!(
                        "view `{}` has no measure `{}`; its measures are {names:?}",
                        view.name, r.measure
                    ),
                );
            }
            Some((_, m)) if m.agg == crate::agg::AggKind::Quantiles => {
                return invalid(
                    field("measure"),
                    format!(
                        "`{}` is a quantiles measure, and alerts on quantiles are not supported: alert on a count, sum, min, max or distinct measure",
                        r.measure
                    ),
                );
            }
            Some(_) => {}
        }
        let is_dim =
            |name: &str| FieldPath::parse(name).is_some_and(|p| view.dimensions.contains(&p));
        for column in r.filter.keys() {
            let known = is_dim(column)
                || column
                    .rsplit_once('@')
                    .is_some_and(|(d, l)| is_dim(d) && lookups.iter().any(|n| n == l));
            if !known {
                return invalid(
                    field("filter"),
                    format!(
                        "`{column}` is neither a dimension of view `{}` nor `dimension@lookup` with a declared [[lookup]]",
                        view.name
                    ),
                );
            }
        }
        let g = view.granularity.as_ms();
        if r.window.0 <= 0 || r.window.0 % g != 0 || r.window.0 / g > max_buckets as i64 {
            return invalid(
                field("window"),
                format!(
                    "must be a multiple of view `{}`'s granularity {} and at most serve.max_buckets ({max_buckets}) of its buckets, e.g. window = \"5m\"",
                    view.name, view.granularity
                ),
            );
        }
        if !r.threshold.is_finite() {
            return invalid(field("threshold"), "must be a finite number".into());
        }
        if r.for_duration.is_some_and(|f| f.0 < 0) {
            return invalid(field("for"), "must be 0s or more, e.g. for = \"2m\"".into());
        }
        if !(r.webhook.starts_with("http://") || r.webhook.starts_with("https://")) {
            return invalid(
                field("webhook"),
                format!(
                    "`{}` must be an http:// or https:// URL to POST notifications to",
                    r.webhook
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn with(rule: &str) -> Result<Config, String> {
        Config::from_toml(&format!(
            "[[lookup]]\nname = \"section\"\npath = \"l.csv\"\nkey = \"k\"\nvalue = \"v\"\n[[alert]]\n{rule}\n[[view]]\nname = \"v\"\ndimensions = [\"properties.page\"]\ngranularity = \"1m\"\nmeasures = [{{ name = \"n\", agg = \"count\" }}, {{ name = \"lat\", agg = \"quantiles\", field = \"properties.latency_ms\" }}]\n"
        ))
        .map_err(|e| e.to_string())
    }

    const OK: &str = "name = \"a\"\nview = \"v\"\nmeasure = \"n\"\nwindow = \"5m\"\ncomparison = \">\"\nthreshold = 10\nwebhook = \"http://127.0.0.1:9/hook\"";

    #[test]
    fn rules_load_and_bad_ones_name_the_field() {
        let cfg = with(&format!(
            "{OK}\nfor = \"2m\"\nfilter = {{ \"properties.page@section\" = [\"news\"] }}"
        ))
        .unwrap();
        assert_eq!(cfg.alerts[0].for_duration.map(|f| f.0), Some(120_000));
        for (swap, field) in [
            (("view = \"v\"", "view = \"w\""), "alert.a.view"),
            (("measure = \"n\"", "measure = \"m\""), "alert.a.measure"),
            (("measure = \"n\"", "measure = \"lat\""), "not supported"),
            (("window = \"5m\"", "window = \"90s\""), "alert.a.window"),
            (("comparison = \">\"", "comparison = \"=>\""), "comparison"),
            (("webhook = \"http:", "webhook = \"ftp:"), "alert.a.webhook"),
            (("name = \"a\"", "name = \"a b\""), "alert.name"),
        ] {
            let e = with(&OK.replace(swap.0, swap.1)).unwrap_err();
            assert!(e.contains(field), "{swap:?}: {e}");
        }
        let e = with(&format!(
            "{OK}\nfilter = {{ \"properties.page@region\" = [\"x\"] }}"
        ))
        .unwrap_err();
        assert!(e.contains("alert.a.filter"), "{e}");
    }
}
