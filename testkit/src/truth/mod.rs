//! The truth: an independent, plain fold of records into views.
//!
//! Given a config's view *definitions* (name, topics, filter, dimensions,
//! granularity, measures) and the records produced, [`Truth`] decides on its
//! own which records the platform must accept (parsing each with
//! `serde_json`, never with core's decoder), then keeps, per view, bucket and
//! group, per measure: the count, the exact integer sum (and the float sum
//! beside it, as core splits them), min, max, the exact set of distinct
//! values and, for `quantiles`, every value (exact quantiles by sorting,
//! [`Cell::quantile`]). It shares no code with the layers under test, so a bug there
//! cannot hide in both. [`Cells`] answer the questions a query asks: a range
//! of buckets, a coarser granularity, a subset of the dimensions.
//!
//! A view with `dedup = "event_id"` counts, among the records it accepts,
//! one per (event_id, event-time UTC day): the first by (Kafka timestamp,
//! topic, partition, offset). The truth keeps each such key's first record
//! and, when a record sorts before the one it kept, folds the view again
//! from the kept records.

use std::collections::{BTreeMap, HashSet};

use tally_core::config::Config;
use tally_core::event::Limits;
use tally_core::view::ViewDef;

mod parse;

pub use parse::accepts;
use parse::{num, parse, text, Num, Parsed};

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
    /// `quantiles`: every numeric value, in no order.
    pub values: Vec<f64>,
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
        self.values.extend_from_slice(&other.values);
    }

    /// The exact `q`-quantile of [`Cell::values`]: the value of 0-based rank
    /// `floor(q * (n - 1))` in sorted order (the rank the platform
    /// documents); `None` without values.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.values.is_empty() {
            return None;
        }
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = (q * (sorted.len() - 1) as f64).floor() as usize;
        sorted.get(rank).copied()
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
    /// `count`, `sum`, `min`, `max`, `distinct` or `quantiles`.
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
    /// `dedup = "event_id"`: per (event_id, day), the record counted.
    pub dedup: bool,
    firsts: BTreeMap<(String, i64), (Order, String, Parsed)>,
}

/// Where a record sits in the order that picks the copy a dedup view
/// counts: Kafka timestamp, topic, partition, offset.
type Order = (i64, String, i32, i64);

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
            dedup: def.dedup.as_deref() == Some("event_id"),
            firsts: BTreeMap::new(),
        }
    }

    /// The index of a measure by name.
    pub fn measure(&self, name: &str) -> usize {
        self.measures
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("view {} has no measure {name}", self.name))
    }

    fn add(&mut self, topic: &str, e: &Parsed, order: Order) {
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
        if !self.dedup {
            return self.fold(e);
        }
        let id = e.get("event_id").and_then(text).unwrap_or_default();
        let key = (id, e.time_ms.div_euclid(86_400_000));
        match self.firsts.get(&key) {
            None => {
                self.firsts
                    .insert(key, (order, topic.to_owned(), e.clone()));
                self.fold(e);
            }
            Some((kept, _, _)) if *kept <= order => {} // a later copy
            Some(_) => {
                // This copy comes first: it is the one counted.
                self.firsts
                    .insert(key, (order, topic.to_owned(), e.clone()));
                self.cells.map.clear();
                let kept: Vec<Parsed> = self.firsts.values().map(|(_, _, p)| p.clone()).collect();
                for p in &kept {
                    self.fold(p);
                }
            }
        }
    }

    fn fold(&mut self, e: &Parsed) {
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
                ("quantiles", Some(Some(v))) => {
                    if let Some(n) = num(v) {
                        cell.count += 1;
                        cell.values.push(match n {
                            Num::Int(i) => i as f64,
                            Num::Float(f) => f,
                        });
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
    /// Records added without coordinates ([`Truth::add`]), numbering them.
    seq: i64,
}

impl Truth {
    /// An empty fold of `cfg`'s views under its `[events]` limits.
    pub fn new(cfg: &Config) -> Truth {
        Truth {
            views: cfg.views.iter().map(ViewTruth::from_def).collect(),
            limits: cfg.events.limits(),
            accepted: 0,
            rejected: 0,
            seq: 0,
        }
    }

    /// Fold one record read from `topic`; returns whether the platform must
    /// accept it. For dedup views the record's place is its Kafka timestamp,
    /// then the order records were added in (partition 0): use
    /// [`Truth::add_at`] when copies of an event share a timestamp.
    pub fn add(&mut self, topic: &str, payload: &[u8], kafka_ts_ms: i64) -> bool {
        self.seq += 1;
        self.add_at(topic, 0, self.seq, payload, kafka_ts_ms)
    }

    /// Fold one record read from `topic` at (`partition`, `offset`);
    /// returns whether the platform must accept it.
    pub fn add_at(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        payload: &[u8],
        kafka_ts_ms: i64,
    ) -> bool {
        match parse(payload, kafka_ts_ms, &self.limits) {
            Some(e) => {
                self.accepted += 1;
                for v in &mut self.views {
                    let order = (kafka_ts_ms, topic.to_owned(), partition, offset);
                    v.add(topic, &e, order);
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

/// The relative error the platform promises for quantiles: 1 %.
pub const QUANTILE_ALPHA: f64 = 0.01;

/// Whether a quantile answered by the platform is within its promised
/// relative error of the exact one (zero and values under 1e-9 in
/// magnitude answer as zero).
pub fn within_quantile_error(got: f64, exact: f64) -> bool {
    if exact.abs() < 1e-9 {
        return got.abs() < 1e-9;
    }
    (got - exact).abs() <= QUANTILE_ALPHA * exact.abs() * (1.0 + 1e-9)
}

/// Redis's own estimate of an exact set: `PFADD` of every value into a
/// scratch key, then `PFCOUNT`. Sketches merged anywhere in the platform must
/// be the sketch of the union, so a distinct answer must equal this exactly.
/// On a cluster connection the scratch key's slot decides the node.
pub fn redis_pfcount(con: &mut impl redis::ConnectionLike, set: &HashSet<String>) -> u64 {
    let key = "test:pfcount:scratch";
    // One command at a time: a cluster connection takes no pipelines.
    redis::cmd("DEL").arg(key).exec(con).expect("DEL scratch");
    let values: Vec<&String> = set.iter().collect();
    for chunk in values.chunks(5_000) {
        redis::cmd("PFADD")
            .arg(key)
            .arg(chunk)
            .exec(con)
            .expect("PFADD");
    }
    let n: u64 = redis::cmd("PFCOUNT").arg(key).query(con).expect("PFCOUNT");
    n
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
    fn quantiles_are_exact_ranks() {
        let c = Cell {
            values: vec![5.0, 1.0, 4.0, 2.0, 3.0],
            ..Cell::default()
        };
        assert_eq!(c.quantile(0.0), Some(1.0));
        assert_eq!(c.quantile(0.5), Some(3.0));
        assert_eq!(c.quantile(0.99), Some(4.0));
        assert_eq!(c.quantile(1.0), Some(5.0));
        assert_eq!(Cell::default().quantile(0.5), None);
        assert!(within_quantile_error(101.0, 100.0) && !within_quantile_error(101.1, 100.0));
    }

    #[test]
    fn hll_error_bounds() {
        assert!(within_hll_error(3, 0));
        assert!(within_hll_error(1040, 1000));
        assert!(!within_hll_error(1041, 1000));
    }
}
