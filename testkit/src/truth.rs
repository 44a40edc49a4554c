//! The truth: an independent, plain fold of records into views.
//!
//! Given a config's view *definitions* (name, topics, filter, dimensions,
//! granularity, measures) and the records produced, [`Truth`] decides on its
//! own which records the platform must accept (parsing each with
//! `serde_json`, never with core's decoder), then keeps, per view, bucket and
//! group, per measure: the count, the exact integer sum (and the float sum
//! beside it, as core splits them), min, max and the exact set of distinct
//! values. It shares no code with the layers under test, so a bug there
//! cannot hide in both. [`Cells`] answer the questions a query asks: a range
//! of buckets, a coarser granularity, a subset of the dimensions.

use std::collections::{BTreeMap, HashSet};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use tally_core::config::Config;
use tally_core::event::Limits;
use tally_core::view::ViewDef;

/// Group values, one per dimension (`None`: the event lacks it).
pub type Group = Vec<Option<String>>;

/// One measure's plain aggregate for one (bucket, group).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cell {
    /// Events that contributed (for `count`: the count).
    pub count: u64,
    /// Sum of the integer values (exact).
    pub sum_int: i128,
    /// Sum of the float values.
    pub sum_float: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// The exact distinct values, by their text.
    pub distinct: HashSet<String>,
}

impl Cell {
    /// Fold another cell of the same measure into this one.
    pub fn merge(&mut self, other: &Cell) {
        self.count += other.count;
        self.sum_int += other.sum_int;
        self.sum_float += other.sum_float;
        self.min = min_opt(self.min, other.min);
        self.max = max_opt(self.max, other.max);
        self.distinct.extend(other.distinct.iter().cloned());
    }

    fn add_num(&mut self, n: Num) {
        self.count += 1;
        let x = match n {
            Num::Int(i) => {
                self.sum_int += i128::from(i);
                i as f64
            }
            Num::Float(f) => {
                self.sum_float += f;
                f
            }
        };
        self.min = min_opt(self.min, Some(x));
        self.max = max_opt(self.max, Some(x));
    }
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) | (None, x) => x,
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) | (None, x) => x,
    }
}

/// A measure of a view, as the truth reads its definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measure {
    pub name: String,
    /// `count`, `sum`, `min`, `max` or `distinct`.
    pub agg: String,
    /// `event_type`, `user_id`, `event_id` or `properties.<name>`.
    pub field: Option<String>,
}

/// Cells of one view at one granularity: (bucket start ms, group) to one
/// [`Cell`] per measure, in the view's measure order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cells {
    pub granularity_ms: i64,
    pub dimensions: Vec<String>,
    pub map: BTreeMap<(i64, Group), Vec<Cell>>,
}

impl Cells {
    pub fn get(&self, bucket_ms: i64, group: &[Option<String>]) -> Option<&[Cell]> {
        self.map
            .get(&(bucket_ms, group.to_vec()))
            .map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The buckets whose start lies in `[from_ms, to_ms)`.
    pub fn range(&self, from_ms: i64, to_ms: i64) -> Cells {
        Cells {
            granularity_ms: self.granularity_ms,
            dimensions: self.dimensions.clone(),
            map: self
                .map
                .iter()
                .filter(|((b, _), _)| *b >= from_ms && *b < to_ms)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Roll the buckets up to `granularity_ms`, a multiple of the current one.
    pub fn rollup(&self, granularity_ms: i64) -> Cells {
        assert!(
            granularity_ms > 0 && granularity_ms % self.granularity_ms == 0,
            "{granularity_ms} ms is not a multiple of {} ms",
            self.granularity_ms
        );
        self.regroup(
            granularity_ms,
            &(0..self.dimensions.len()).collect::<Vec<_>>(),
        )
    }

    /// Keep only the dimensions named in `dims` (in that order), merging
    /// the groups that become equal.
    pub fn group_by(&self, dims: &[&str]) -> Cells {
        let idx: Vec<usize> = dims
            .iter()
            .map(|d| {
                self.dimensions
                    .iter()
                    .position(|x| x == d)
                    .unwrap_or_else(|| panic!("`{d}` is not a dimension of {:?}", self.dimensions))
            })
            .collect();
        self.regroup(self.granularity_ms, &idx)
    }

    fn regroup(&self, granularity_ms: i64, idx: &[usize]) -> Cells {
        let mut map: BTreeMap<(i64, Group), Vec<Cell>> = BTreeMap::new();
        for ((b, g), cells) in &self.map {
            let key = (
                b.div_euclid(granularity_ms) * granularity_ms,
                idx.iter().map(|&i| g[i].clone()).collect(),
            );
            match map.get_mut(&key) {
                Some(acc) => acc.iter_mut().zip(cells).for_each(|(a, c)| a.merge(c)),
                None => {
                    map.insert(key, cells.clone());
                }
            }
        }
        Cells {
            granularity_ms,
            dimensions: idx.iter().map(|&i| self.dimensions[i].clone()).collect(),
            map,
        }
    }
}

/// One view's definition and its folded cells at the view's granularity.
#[derive(Debug, Clone)]
pub struct ViewTruth {
    pub name: String,
    pub topics: Vec<String>,
    pub filter: Vec<(String, Vec<String>)>,
    pub measures: Vec<Measure>,
    pub cells: Cells,
}

impl ViewTruth {
    fn from_def(def: &ViewDef) -> ViewTruth {
        ViewTruth {
            name: def.name.clone(),
            topics: def.topics.clone(),
            filter: def
                .filter
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            measures: def
                .measures
                .iter()
                .map(|m| Measure {
                    name: m.name.clone(),
                    agg: m.agg.name().to_owned(),
                    field: m.field.as_ref().map(|f| f.as_string()),
                })
                .collect(),
            cells: Cells {
                granularity_ms: def.granularity.as_ms(),
                dimensions: def.dimensions.iter().map(|d| d.as_string()).collect(),
                map: BTreeMap::new(),
            },
        }
    }

    /// The index of a measure by name.
    pub fn measure(&self, name: &str) -> usize {
        self.measures
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("view {} has no measure {name}", self.name))
    }

    fn add(&mut self, topic: &str, e: &Parsed) {
        if !self.topics.is_empty() && !self.topics.iter().any(|t| t == topic) {
            return;
        }
        let passes = self.filter.iter().all(|(path, allowed)| {
            e.get(path)
                .and_then(text)
                .is_some_and(|t| allowed.contains(&t))
        });
        if !passes {
            return;
        }
        let g = self.cells.granularity_ms;
        let group: Group = self
            .cells
            .dimensions
            .iter()
            .map(|d| e.get(d).and_then(text))
            .collect();
        let n = self.measures.len();
        let cells = self
            .cells
            .map
            .entry((e.time_ms.div_euclid(g) * g, group))
            .or_insert_with(|| vec![Cell::default(); n]);
        for (m, cell) in self.measures.iter().zip(cells.iter_mut()) {
            let value = m.field.as_deref().map(|f| e.get(f));
            match (m.agg.as_str(), value) {
                ("count", None) => cell.count += 1,
                ("count", Some(v)) => cell.count += u64::from(v.is_some_and(|v| !v.is_null())),
                ("sum" | "min" | "max", Some(Some(v))) => {
                    if let Some(n) = num(v) {
                        cell.add_num(n);
                    }
                }
                ("distinct", Some(Some(v))) => {
                    if let Some(t) = text(v) {
                        cell.count += 1;
                        cell.distinct.insert(t);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The plain fold of every view of a config.
#[derive(Debug, Clone)]
pub struct Truth {
    pub views: Vec<ViewTruth>,
    pub limits: Limits,
    pub accepted: u64,
    pub rejected: u64,
}

impl Truth {
    /// An empty fold of `cfg`'s views under its `[events]` limits.
    pub fn new(cfg: &Config) -> Truth {
        Truth {
            views: cfg.views.iter().map(ViewTruth::from_def).collect(),
            limits: cfg.events.limits(),
            accepted: 0,
            rejected: 0,
        }
    }

    /// Fold one record read from `topic`; returns whether the platform must
    /// accept it.
    pub fn add(&mut self, topic: &str, payload: &[u8], kafka_ts_ms: i64) -> bool {
        match parse(payload, kafka_ts_ms, &self.limits) {
            Some(e) => {
                self.accepted += 1;
                for v in &mut self.views {
                    v.add(topic, &e);
                }
                true
            }
            None => {
                self.rejected += 1;
                false
            }
        }
    }

    /// Fold a generated record, checking that the generator's `valid` flag
    /// agrees with the truth's own verdict.
    pub fn add_generated(&mut self, topic: &str, g: &tally_gen::Generated) -> bool {
        let ok = self.add(topic, &g.payload, g.kafka_ts_ms);
        assert_eq!(
            ok,
            g.valid,
            "truth and generator disagree on {:?} ({:?})",
            String::from_utf8_lossy(&g.payload[..g.payload.len().min(300)]),
            g.kind
        );
        ok
    }

    pub fn view(&self, name: &str) -> &ViewTruth {
        self.views
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no view {name} in the truth"))
    }
}

/// Whether a distinct estimate is within the error of Redis's HyperLogLog
/// (p = 14, 0.81 % standard error): 4 % relative, or ±3 for small sets.
///
/// A test checks thousands of cells, so the bound must sit far in the tail:
/// measured over 20,000 random sets of 222 values, 0.35 % of the estimates
/// missed by more than 2 % (the worst by 3.2 %), which made a 2 % bound fail
/// on correct data. 4 % is about 5 standard errors.
pub fn within_hll_error(estimate: u64, exact: usize) -> bool {
    let (est, exact) = (estimate as f64, exact as f64);
    (est - exact).abs() <= (exact * 0.04).max(3.0)
}

/// Redis's own estimate of an exact set: `PFADD` of every value into a
/// scratch key, then `PFCOUNT`. Sketches merged anywhere in the platform must
/// be the sketch of the union, so a distinct answer must equal this exactly.
pub fn redis_pfcount(con: &mut redis::Connection, set: &HashSet<String>) -> u64 {
    let key = "test:pfcount:scratch";
    let mut pipe = redis::pipe();
    pipe.del(key).ignore();
    let values: Vec<&String> = set.iter().collect();
    for chunk in values.chunks(5_000) {
        pipe.cmd("PFADD").arg(key).arg(chunk).ignore();
    }
    pipe.cmd("PFCOUNT").arg(key);
    let (n,): (u64,) = pipe.query(con).expect("PFADD/PFCOUNT");
    n
}

/// Whether the platform must accept `payload` with Kafka time `kafka_ts_ms`.
pub fn accepts(payload: &[u8], kafka_ts_ms: i64, limits: &Limits) -> bool {
    parse(payload, kafka_ts_ms, limits).is_some()
}

#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

fn num(v: &Value) -> Option<Num> {
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
fn text(v: &Value) -> Option<String> {
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
struct Parsed {
    event_id: Value,
    event_type: Value,
    time_ms: i64,
    user_id: Option<Value>,
    properties: Vec<(String, Value)>,
}

impl Parsed {
    /// The value at `path`, unless absent or null.
    fn get(&self, path: &str) -> Option<&Value> {
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
fn parse(payload: &[u8], kafka_ts_ms: i64, limits: &Limits) -> Option<Parsed> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tally_gen::{Generator, Shape};

    fn cfg() -> Config {
        crate::config::TestConfig::new().build()
    }

    #[test]
    fn agrees_with_the_generator_on_validity() {
        let cfg = cfg();
        let mut truth = Truth::new(&cfg);
        let shape = Shape {
            malformed_share: 0.05,
            late_share: 0.2,
            out_of_order_share: 0.3,
            ..Shape::default()
        }
        .with_limits(cfg.events.limits());
        let mut g = Generator::new(shape, 5).unwrap();
        for i in 0..50_000 {
            truth.add_generated("events", &g.next(1_704_067_200_000 + i * 13));
        }
        assert!(truth.rejected > 1000 && truth.accepted > 40_000);
    }

    #[test]
    fn folds_filters_groups_and_rolls_up() {
        let cfg = cfg();
        let mut t = Truth::new(&cfg);
        let base = 1_704_067_200_000i64;
        let recs = [
            (
                r#"{"event_id":"a","event_type":"page_view","timestamp":1704067200000,"user_id":"u1","properties":{"page":"/a","duration":10,"scroll":1.5}}"#,
                true,
            ),
            (
                r#"{"event_id":"b","event_type":"page_view","timestamp":"2024-01-01T00:01:30Z","user_id":7,"properties":{"page":"/a","duration":-4}}"#,
                true,
            ),
            (
                r#"{"event_id":"c","event_type":"click","timestamp":1704067200000,"properties":{"page":"/a","duration":3}}"#,
                true,
            ),
            (
                r#"{"event_id":"d","event_type":"page_view","event_type":"x","timestamp":1704067200000}"#,
                false,
            ),
            (
                r#"{"event_id":"e","event_type":"page_view","timestamp":1704067200000,"properties":{"p":[1]}}"#,
                false,
            ),
            (
                r#"{"event_id":"f","event_type":"page_view","timestamp":1}"#,
                false,
            ),
        ];
        for (r, ok) in recs {
            assert_eq!(t.add("events", r.as_bytes(), base), ok, "{r}");
        }
        let pv = t.view("page_views");
        let cells = &pv.cells;
        assert_eq!(cells.len(), 2);
        let a = cells.get(base, &[Some("/a".into())]).unwrap();
        assert_eq!(a[pv.measure("views")].count, 1);
        assert_eq!(a[pv.measure("duration")].sum_int, 10);
        assert_eq!(a[pv.measure("scroll")].sum_float, 1.5);
        let hour = cells.rollup(3_600_000);
        let a = hour.get(base, &[Some("/a".into())]).unwrap();
        assert_eq!(a[pv.measure("views")].count, 2);
        assert_eq!(a[pv.measure("duration")].sum_int, 6);
        assert_eq!(a[pv.measure("shortest")].min, Some(-4.0));
        assert_eq!(a[pv.measure("longest")].max, Some(10.0));
        assert_eq!(a[pv.measure("users")].distinct.len(), 2);
        assert!(a[pv.measure("users")].distinct.contains("7"));
        assert_eq!(cells.range(base + 1, base + 120_000).len(), 1);
        let bt = t.view("by_type");
        let all = bt.cells.group_by(&[]).rollup(86_400_000);
        assert_eq!(all.get(base, &[]).unwrap()[bt.measure("events")].count, 3);
        let by = bt.cells.group_by(&["event_type"]);
        assert_eq!(by.len(), 2);
    }

    #[test]
    fn hll_error_bounds() {
        assert!(within_hll_error(3, 0));
        assert!(within_hll_error(1040, 1000));
        assert!(!within_hll_error(1041, 1000));
    }
}
