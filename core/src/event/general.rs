//! The general path: any JSON, through serde_json, into the same
//! [`Raw`] the fast scanner builds. It decides everything the scanner
//! declines (escapes, nesting, duplicates, malformed input) and names the
//! reason: a syntax error is `not_json`, a well-formed value of the wrong
//! shape gets its own [`Reject`].

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::raw::{Field, Props, Raw};
use super::{Reject, Scalar};

/// Parse `text` into its top-level fields, or the reason it is not an event
/// object.
pub(super) fn parse(text: &str) -> Result<Raw<'_>, Reject> {
    let mut de = serde_json::Deserializer::from_str(text);
    let raw = match de.deserialize_any(RawVisitor) {
        Ok(Ok(raw)) => raw,
        Ok(Err(reject)) => return Err(reject),
        Err(e) => return Err(Reject::NotJson(e.to_string())),
    };
    if let Err(e) = de.end() {
        return Err(Reject::NotJson(e.to_string()));
    }
    Ok(raw)
}

/// Visits the top-level value. Returns `Ok(Err(reject))` for well-formed JSON
/// that is not a valid event shape, so that syntax errors and shape errors
/// stay distinct.
struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Result<Raw<'de>, Reject>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = Raw::default();
        let mut duplicate = None;
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            let slot = match key.0.as_ref() {
                "event_id" => Some(("event_id", &mut raw.event_id)),
                "event_type" => Some(("event_type", &mut raw.event_type)),
                "timestamp" => Some(("timestamp", &mut raw.timestamp)),
                "user_id" => Some(("user_id", &mut raw.user_id)),
                "properties" => {
                    let props = map.next_value_seed(PropertiesSeed)?;
                    if raw.properties.replace(props).is_some() {
                        duplicate.get_or_insert("properties");
                    }
                    None
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    None
                }
            };
            if let Some((name, slot)) = slot {
                let value = map.next_value_seed(FieldSeed)?;
                if slot.replace(value).is_some() {
                    duplicate.get_or_insert(name);
                }
            }
        }
        Ok(match duplicate {
            Some(name) => Err(Reject::DuplicateField(name)),
            None => Ok(raw),
        })
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err(Reject::NotObject))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(Reject::NotObject))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(Reject::NotObject))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(Reject::NotObject))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(Reject::NotObject))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(Reject::NotObject))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Err(Reject::NotObject))
    }
}

/// A string borrowed from the input when it has no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Deserializes any value into a [`Field`].
struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Scalar(Scalar::Str(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Field::Scalar(Scalar::Str(Cow::Owned(v.to_owned()))))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Field::Scalar(Scalar::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Field::Scalar(match i64::try_from(v) {
            Ok(i) => Scalar::Int(i),
            Err(_) => Scalar::Float(v as f64),
        }))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Field::Scalar(Scalar::Float(v)))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Field::Scalar(Scalar::Bool(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Field::Scalar(Scalar::Null))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Nested)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Nested)
    }
}

/// Deserializes `properties`: an object of scalars.
struct PropertiesSeed;

impl<'de> DeserializeSeed<'de> for PropertiesSeed {
    type Value = Props<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PropertiesSeed {
    type Value = Props<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of scalars")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut props = Vec::with_capacity(map.size_hint().unwrap_or(4));
        let mut bad = None;
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            match map.next_value_seed(FieldSeed)? {
                Field::Scalar(v) => props.push((key.0, v)),
                Field::Nested => {
                    bad.get_or_insert_with(|| key.0.into_owned());
                }
            }
        }
        Ok(match bad {
            Some(k) => Err(Reject::PropertyNotScalar(k)),
            None => Ok(props),
        })
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(Vec::new()))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err(wrong_properties()))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(wrong_properties()))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(wrong_properties()))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(wrong_properties()))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(wrong_properties()))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(wrong_properties()))
    }
}

fn wrong_properties() -> Reject {
    Reject::WrongType {
        field: "properties",
        expected: "an object",
    }
}
