//! View definitions: what to count, grouped how, at which granularity.
//!
//! A view is declared once in `tally.toml` and read by every layer: the speed
//! layer and the batch layer must extract the same dimensions and measure inputs
//! from the same event, so the extraction ([`ViewDef::group_of`],
//! [`MeasureDef::input`]) lives here too. Validation names the view and the
//! field, and says what is allowed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::agg::{AggKind, Num};
use crate::event::{Event, Scalar};
use crate::hll::murmurhash64a;
use crate::time::Granularity;

/// A field of an event that a view can read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldPath {
    EventType,
    UserId,
    EventId,
    Property(String),
}

impl FieldPath {
    /// Parse `event_type`, `user_id`, `event_id` or `properties.<name>`.
    pub fn parse(s: &str) -> Option<FieldPath> {
        match s {
            "event_type" => Some(FieldPath::EventType),
            "user_id" => Some(FieldPath::UserId),
            "event_id" => Some(FieldPath::EventId),
            _ => s
                .strip_prefix("properties.")
                .filter(|name| !name.is_empty())
                .map(|name| FieldPath::Property(name.to_owned())),
        }
    }

    pub fn as_string(&self) -> String {
        match self {
            FieldPath::EventType => "event_type".into(),
            FieldPath::UserId => "user_id".into(),
            FieldPath::EventId => "event_id".into(),
            FieldPath::Property(p) => format!("properties.{p}"),
        }
    }

    /// The value of this field in `event`, if present and not null.
    pub fn get<'e>(&self, event: &'e Event<'_>) -> Option<ScalarRef<'e>> {
        match self {
            FieldPath::EventType => Some(ScalarRef::Str(&event.event_type)),
            FieldPath::UserId => event.user_id.as_deref().map(ScalarRef::Str),
            FieldPath::EventId => Some(ScalarRef::Str(&event.event_id)),
            FieldPath::Property(name) => match event.property(name)? {
                Scalar::Null => None,
                Scalar::Str(s) => Some(ScalarRef::Str(s)),
                Scalar::Int(i) => Some(ScalarRef::Int(*i)),
                Scalar::Float(f) => Some(ScalarRef::Float(*f)),
                Scalar::Bool(b) => Some(ScalarRef::Bool(*b)),
            },
        }
    }
}

/// A borrowed non-null scalar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScalarRef<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl ScalarRef<'_> {
    /// The text a dimension value or distinct key is known by. Numbers print as
    /// JSON prints them, so `30` and `"30"` are the same group.
    pub fn write_text(self, out: &mut String) {
        use std::fmt::Write;
        match self {
            ScalarRef::Str(s) => out.push_str(s),
            ScalarRef::Int(i) => {
                let _ = write!(out, "{i}");
            }
            ScalarRef::Float(f) => {
                let _ = write!(out, "{f}");
            }
            ScalarRef::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        }
    }

    pub fn num(self) -> Option<Num> {
        match self {
            ScalarRef::Int(i) => Some(Num::Int(i)),
            ScalarRef::Float(f) => Some(Num::Float(f)),
            _ => None,
        }
    }
}

impl Serialize for FieldPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_string())
    }
}

impl<'de> Deserialize<'de> for FieldPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        FieldPath::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown field path `{s}`: use event_type, user_id, event_id or properties.<name>"
            ))
        })
    }
}

/// One measure of a view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureDef {
    pub name: String,
    pub agg: AggKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<FieldPath>,
}

/// What a measure takes from one event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input<'a> {
    /// `count`: the event itself.
    One,
    /// `sum`, `min`, `max`, `quantiles`: a number.
    Num(Num),
    /// `distinct`: a value, by its text.
    Key(ScalarRef<'a>),
}

impl MeasureDef {
    /// What this measure takes from `event`, or `None` when the event does not
    /// contribute (field missing, or not a number for a numeric aggregate).
    pub fn input<'e>(&self, event: &'e Event<'_>) -> Option<Input<'e>> {
        match (self.agg, &self.field) {
            (AggKind::Count, None) => Some(Input::One),
            (AggKind::Count, Some(f)) => f.get(event).map(|_| Input::One),
            (kind, Some(f)) if kind.numeric() => f.get(event)?.num().map(Input::Num),
            (_, Some(f)) => f.get(event).map(Input::Key),
            (_, None) => None,
        }
    }
}

/// A view as declared in `tally.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewDef {
    pub name: String,
    /// Topics this view reads; empty means every configured topic.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Keep only events whose field values are in these lists.
    #[serde(default)]
    pub filter: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub dimensions: Vec<FieldPath>,
    pub granularity: Granularity,
    pub measures: Vec<MeasureDef>,
    /// `dedup = "event_id"`: count each `event_id` once per event-time UTC
    /// day (producers that retry write one event twice). The batch is exact;
    /// the speed layer removes the duplicates its bounded window sees
    /// (`speed.dedup_window`). Unset: every record counts. Part of the
    /// definition (and so of its fingerprint) only when set, so views
    /// without it keep theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<String>,
}

/// The one key `dedup` accepts.
pub const DEDUP_EVENT_ID: &str = "event_id";

impl ViewDef {
    /// Whether the view counts each `event_id` once per event-time day
    /// (`dedup = "event_id"`).
    pub fn dedups(&self) -> bool {
        self.dedup.as_deref() == Some(DEDUP_EVENT_ID)
    }

    /// Parsed filter: field paths and their allowed values.
    pub fn parsed_filter(&self) -> Vec<(FieldPath, Vec<String>)> {
        self.filter
            .iter()
            .filter_map(|(k, v)| FieldPath::parse(k).map(|p| (p, v.clone())))
            .collect()
    }

    /// Whether `event` from `topic` belongs to this view.
    pub fn accepts(
        &self,
        topic: &str,
        event: &Event<'_>,
        filter: &[(FieldPath, Vec<String>)],
    ) -> bool {
        self.accepts_with(topic, event, filter, &mut String::new())
    }

    /// [`ViewDef::accepts`] for hot paths: strings compare in place and
    /// other scalars are written into `text` (scratch), so nothing is
    /// allocated per event. The speed and batch layers both call this, so
    /// they cannot disagree on what a view holds.
    pub fn accepts_with(
        &self,
        topic: &str,
        event: &Event<'_>,
        filter: &[(FieldPath, Vec<String>)],
        text: &mut String,
    ) -> bool {
        if !self.topics.is_empty() && !self.topics.iter().any(|t| t == topic) {
            return false;
        }
        filter.iter().all(|(path, allowed)| match path.get(event) {
            None => false,
            Some(ScalarRef::Str(s)) => allowed.iter().any(|a| a == s),
            Some(v) => {
                text.clear();
                v.write_text(text);
                allowed.iter().any(|a| a == text)
            }
        })
    }

    /// The group values of `event`, one per dimension (`None` when absent).
    pub fn group_of(&self, event: &Event<'_>) -> Vec<Option<String>> {
        self.dimensions
            .iter()
            .map(|d| {
                d.get(event).map(|v| {
                    let mut s = String::new();
                    v.write_text(&mut s);
                    s
                })
            })
            .collect()
    }

    /// A stable fingerprint of the definition: a changed definition means a
    /// full recompute of the view.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{:016x}", murmurhash64a(&json, 0x7a11))
    }

    /// Whether the view has a measure kept in counter fields (count, sum,
    /// min, max): a slice of it has a counter log
    /// ([`crate::counter_log`]).
    pub fn has_counters(&self) -> bool {
        use crate::agg::AggKind;
        self.measures.iter().any(|m| {
            matches!(
                m.agg,
                AggKind::Count | AggKind::Sum | AggKind::Min | AggKind::Max
            )
        })
    }

    /// The names of the view's `distinct` measures, in order: each has a
    /// sketch per cell (`keys::SketchField`).
    pub fn distinct_measures(&self) -> Vec<&str> {
        self.measures
            .iter()
            .filter(|m| m.agg == crate::agg::AggKind::Distinct)
            .map(|m| m.name.as_str())
            .collect()
    }

    /// The names of the view's `quantiles` measures, in order: each has a
    /// quantile sketch per cell (`keys::Keys::quantile_prefix`).
    pub fn quantile_measures(&self) -> Vec<&str> {
        self.measures
            .iter()
            .filter(|m| m.agg == crate::agg::AggKind::Quantiles)
            .map(|m| m.name.as_str())
            .collect()
    }

    /// The roll-up levels a snapshot of this view is written at: its own
    /// granularity, then 1h and 1d where it divides them and is finer. The
    /// monoid makes each level exact; a query reads the coarsest one that
    /// answers it.
    pub fn levels(&self) -> Vec<Granularity> {
        let mut levels = vec![self.granularity];
        for coarser in [Granularity::HOUR, Granularity::DAY] {
            if self.granularity < coarser && self.granularity.divides(coarser) {
                levels.push(coarser);
            }
        }
        levels
    }

    pub fn measure(&self, name: &str) -> Option<(usize, &MeasureDef)> {
        self.measures
            .iter()
            .enumerate()
            .find(|(_, m)| m.name == name)
    }

    /// Check the definition; the error names the view, the field and the fix.
    pub fn validate(&self, known_topics: &[String]) -> Result<(), ViewError> {
        let err = |field: String, problem: String| ViewError {
            view: self.name.clone(),
            field,
            problem,
        };
        if !valid_name(&self.name) {
            return Err(err(
                "name".into(),
                format!(
                    "`{}` is not a valid view name: use 1-64 letters, digits, `_` or `-`",
                    self.name
                ),
            ));
        }
        for t in &self.topics {
            if !known_topics.is_empty() && !known_topics.contains(t) {
                return Err(err(
                    "topics".into(),
                    format!("topic `{t}` is not in [kafka] topics {known_topics:?}: add it there or remove it here"),
                ));
            }
        }
        for key in self.filter.keys() {
            if FieldPath::parse(key).is_none() {
                return Err(err(
                    format!("filter.{key}"),
                    format!("unknown field path `{key}`: use event_type, user_id, event_id or properties.<name>"),
                ));
            }
        }
        if let Some(d) = self.dedup.as_deref().filter(|d| *d != DEDUP_EVENT_ID) {
            return Err(err(
                "dedup".into(),
                format!("`{d}` is not a dedup key: use dedup = \"event_id\" (count each event_id once per event-time day), or remove the line"),
            ));
        }
        let mut seen_dims = Vec::new();
        for d in &self.dimensions {
            if seen_dims.contains(&d) {
                return Err(err(
                    "dimensions".into(),
                    format!(
                        "dimension `{}` is listed twice: list each once",
                        d.as_string()
                    ),
                ));
            }
            seen_dims.push(d);
        }
        if self.measures.is_empty() {
            return Err(err(
                "measures".into(),
                "a view needs at least one measure, e.g. { name = \"events\", agg = \"count\" }"
                    .into(),
            ));
        }
        let mut names: Vec<&str> = Vec::new();
        for m in &self.measures {
            let field = format!("measures.{}", m.name);
            if !valid_name(&m.name) {
                return Err(err(
                    field,
                    format!(
                        "`{}` is not a valid measure name: use 1-64 letters, digits, `_` or `-`",
                        m.name
                    ),
                ));
            }
            if names.contains(&m.name.as_str()) {
                return Err(err(
                    field,
                    format!(
                        "measure name `{}` is used twice: names must be unique",
                        m.name
                    ),
                ));
            }
            names.push(&m.name);
            match (&m.field, m.agg.needs_field()) {
                (None, true) => {
                    return Err(err(
                        field,
                        format!(
                            "agg `{}` needs a `field`, e.g. field = \"properties.duration\"",
                            m.agg.name()
                        ),
                    ))
                }
                (Some(FieldPath::EventType | FieldPath::UserId | FieldPath::EventId), _)
                    if m.agg.numeric() =>
                {
                    return Err(err(
                        field,
                        format!(
                            "agg `{}` needs a numeric field: use properties.<name>",
                            m.agg.name()
                        ),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Names go into Redis keys and object-store paths: keep them plain.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A view definition that does not validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("view `{view}`, field `{field}`: {problem}")]
pub struct ViewError {
    pub view: String,
    pub field: String,
    pub problem: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{decode, Limits};

    fn view() -> ViewDef {
        toml::from_str(
            r#"
            name = "page_views"
            topics = ["events"]
            filter = { event_type = ["page_view"] }
            dimensions = ["properties.page"]
            granularity = "1m"
            measures = [
              { name = "views", agg = "count" },
              { name = "duration", agg = "sum", field = "properties.duration" },
              { name = "users", agg = "distinct", field = "user_id" },
            ]
            "#,
        )
        .expect("valid view")
    }

    #[test]
    fn extracts_group_and_inputs() {
        let v = view();
        let rec = br#"{"event_id":"e","event_type":"page_view","timestamp":1704067200000,"user_id":"u1","properties":{"page":"/home","duration":30}}"#;
        let e = decode(rec, 1_704_067_200_000, &Limits::default()).unwrap();
        let filter = v.parsed_filter();
        assert!(v.accepts("events", &e, &filter));
        assert!(!v.accepts("other", &e, &filter));
        assert_eq!(v.group_of(&e), vec![Some("/home".to_string())]);
        assert_eq!(v.measures[0].input(&e), Some(Input::One));
        assert_eq!(v.measures[1].input(&e), Some(Input::Num(Num::Int(30))));
        assert_eq!(
            v.measures[2].input(&e),
            Some(Input::Key(ScalarRef::Str("u1")))
        );
    }

    #[test]
    fn filter_rejects_other_types_and_missing_fields_do_not_contribute() {
        let v = view();
        let rec = br#"{"event_id":"e","event_type":"click","timestamp":1704067200000}"#;
        let e = decode(rec, 1_704_067_200_000, &Limits::default()).unwrap();
        assert!(!v.accepts("events", &e, &v.parsed_filter()));
        assert_eq!(v.measures[1].input(&e), None);
        assert_eq!(v.group_of(&e), vec![None]);
    }

    #[test]
    fn levels_are_the_base_then_the_hour_and_day_it_divides() {
        let mut v = view();
        let at = |v: &ViewDef| v.levels().iter().map(|g| g.to_string()).collect::<Vec<_>>();
        assert_eq!(at(&v), ["1m", "1h", "1d"]);
        v.granularity = "16m".parse().unwrap(); // divides a day, not an hour
        assert_eq!(at(&v), ["16m", "1d"]);
        v.granularity = Granularity::HOUR;
        assert_eq!(at(&v), ["1h", "1d"]);
        v.granularity = "2h".parse().unwrap();
        assert_eq!(at(&v), ["2h", "1d"]);
        v.granularity = Granularity::DAY;
        assert_eq!(at(&v), ["1d"]);
    }

    #[test]
    fn fingerprint_changes_with_the_definition() {
        let a = view();
        let mut b = view();
        b.granularity = Granularity::HOUR;
        assert_eq!(a.fingerprint(), view().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut c = view();
        c.dedup = Some(DEDUP_EVENT_ID.into());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn dedup_takes_only_event_id() {
        let mut v = view();
        assert!(!v.dedups());
        v.dedup = Some("event_id".into());
        assert!(v.dedups());
        assert_eq!(v.validate(&[]), Ok(()));
        v.dedup = Some("user_id".into());
        let e = v.validate(&[]).unwrap_err();
        assert_eq!(e.field, "dedup");
        assert!(e.problem.contains("dedup = \"event_id\""), "{e}");
    }
}
