//! The truth's own reading of a record: whether the platform must accept
//! it (the event format and the limits, parsed with `serde_json`, never with
//! core's decoder), and the fields and values the fold needs from it.

use std::collections::BTreeMap;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use tally_core::event::Limits;

/// Whether the platform must accept `payload` with Kafka time `kafka_ts_ms`.
pub fn accepts(payload: &[u8], kafka_ts_ms: i64, limits: &Limits) -> bool {
    parse(payload, kafka_ts_ms, limits).is_some()
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Num {
    Int(i64),
    Float(f64),
}

pub(super) fn num(v: &Value) -> Option<Num> {
    match v {
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => Num::Int(i),
            None => Num::Float(n.as_f64()?),
        }),
        _ => None,
    }
}

/// The text a value is grouped and counted distinct by: strings as they are,
/// numbers as JSON prints them, booleans as `true`/`false`.
pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => i.to_string(),
            None => n.as_f64()?.to_string(),
        }),
        _ => None,
    }
}

/// A top-level JSON value: objects as their key-value pairs in order,
/// duplicates kept (`serde_json::Value` would keep only the last).
enum Field {
    Object(Vec<(String, Value)>),
    Other(Value),
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Field::Object(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Value>()? {
                    out.push(v);
                }
                Ok(Field::Other(Value::Array(out)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Field, E> {
                Ok(Field::Other(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Field, E> {
                Ok(Field::Other(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Field, E> {
                Ok(Field::Other(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Field, E> {
                Ok(Field::Other(Value::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Field, E> {
                Ok(Field::Other(Value::String(v.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Field, E> {
                Ok(Field::Other(Value::Null))
            }
        }
        d.deserialize_any(V)
    }
}

/// A top-level object's fields, values that are objects kept as pairs.
struct Object(Vec<(String, Field)>);

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Object;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Field>()? {
                    out.push((k, v));
                }
                Ok(Object(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// An accepted event, as the truth sees it.
#[derive(Debug, Clone)]
pub(super) struct Parsed {
    event_id: Value,
    event_type: Value,
    pub(super) time_ms: i64,
    user_id: Option<Value>,
    properties: Vec<(String, Value)>,
}

impl Parsed {
    /// The value at `path`, unless absent or null.
    pub(super) fn get(&self, path: &str) -> Option<&Value> {
        let v = match path {
            "event_type" => Some(&self.event_type),
            "event_id" => Some(&self.event_id),
            "user_id" => self.user_id.as_ref(),
            _ => {
                let name = path.strip_prefix("properties.")?;
                // Duplicated properties: the first one counts.
                self.properties
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v)
            }
        };
        v.filter(|v| !v.is_null())
    }
}

/// The truth's own validation, from the event format (docs/ARCHITECTURE.md, "Events") and the limits.
pub(super) fn parse(payload: &[u8], kafka_ts_ms: i64, limits: &Limits) -> Option<Parsed> {
    // Kafka times from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z; -1
    // (no timestamp) is outside.
    if !(0..=253_402_300_799_999).contains(&kafka_ts_ms) {
        return None;
    }
    if payload.is_empty() || payload.len() > limits.max_bytes {
        return None;
    }
    let text_in = std::str::from_utf8(payload).ok()?;
    let Object(fields) = serde_json::from_str(text_in).ok()?;
    let mut found: BTreeMap<&str, &Field> = BTreeMap::new();
    for (k, v) in &fields {
        if matches!(
            k.as_str(),
            "event_id" | "event_type" | "timestamp" | "user_id" | "properties"
        ) && found.insert(k.as_str(), v).is_some()
        {
            return None; // a known field twice
        }
    }
    let scalar = |name: &str| match found.get(name) {
        Some(Field::Other(v)) => Some(v),
        _ => None,
    };
    let non_empty = |name: &str| match scalar(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(Value::String(s.clone())),
        _ => None,
    };
    let event_id = non_empty("event_id")?;
    let event_type = non_empty("event_type")?;
    let time_ms = match scalar("timestamp")? {
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i,
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => f as i64,
            _ => return None,
        },
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()?
            .timestamp_millis(),
        _ => return None,
    };
    if time_ms < kafka_ts_ms.saturating_sub(limits.max_past_ms)
        || time_ms > kafka_ts_ms.saturating_add(limits.max_future_ms)
    {
        return None;
    }
    let user_id = match found.get("user_id") {
        None | Some(Field::Other(Value::Null)) => None,
        Some(Field::Other(v @ (Value::String(_) | Value::Number(_)))) => {
            Some(Value::String(text(v)?))
        }
        Some(_) => return None,
    };
    let properties = match found.get("properties") {
        None | Some(Field::Other(Value::Null)) => Vec::new(),
        Some(Field::Object(pairs)) => pairs.clone(),
        Some(_) => return None,
    };
    if properties
        .iter()
        .any(|(_, v)| matches!(v, Value::Array(_) | Value::Object(_)))
    {
        return None;
    }
    // Fractional numbers past ±1e300 could overflow a float sum: rejected.
    let huge_float = |v: &Value| match v {
        Value::Number(n) => n.as_i64().is_none() && n.as_f64().is_some_and(|f| f.abs() > 1e300),
        _ => false,
    };
    if properties.iter().any(|(_, v)| huge_float(v)) {
        return None;
    }
    Some(Parsed {
        event_id,
        event_type,
        time_ms,
        user_id,
        properties,
    })
}
