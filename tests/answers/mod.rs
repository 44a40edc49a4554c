//! Random dashboard queries and their answers from the fold, for the tests
//! that run the whole platform (`platform.rs`, `dependencies.rs`, …), and
//! load produced with the fold kept beside it ([`produce_folded`]).
//!
//! A [`Query`] knows its URL and how [`Truth`] answers it; [`Query::compare`]
//! checks every point and every group's totals of a response against that
//! answer: counts, sums, minima and maxima equal, distincts equal to what
//! Redis's own `PFCOUNT` says for the exact set, quantiles within the
//! promised relative error of the exact quantile of the values.

// Shared by several test binaries: `pub` is the module's surface to them.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;
use tally_core::config::KafkaConfig;
use tally_core::time::now_ms;
use tally_gen::{produce, Generated, Generator, ProduceOptions};
use tally_testkit::config::TOPIC;
use tally_testkit::truth::{
    redis_pfcount, within_hll_error, within_quantile_error, Cell, Cells, Truth, ViewTruth,
};

/// Produce `options`' events from `generator` to the test topic, folding
/// each into `truth` as it is sent; the broker must take every one.
pub fn produce_folded(
    rt: &tokio::runtime::Runtime,
    kafka: &KafkaConfig,
    generator: &mut Generator,
    options: &ProduceOptions,
    truth: &mut Truth,
) {
    let mut fold = |g: &Generated| {
        truth.add_generated(TOPIC, g);
    };
    let report = rt
        .block_on(produce(
            kafka,
            generator,
            options,
            Some(&mut fold),
            &tokio_util::sync::CancellationToken::new(),
        ))
        .expect("produce");
    assert_eq!(report.failed, 0, "{report:?}");
}

/// A query and how the truth answers it.
#[derive(Debug)]
pub struct Query<'a> {
    view: &'a ViewTruth,
    from: i64,
    to: i64,
    granularity_ms: i64,
    group_by: Vec<String>,
    filters: Vec<(String, String)>,
    measures: Vec<usize>,
    /// `quantiles=` (none: the default p50, p90, p99).
    quantiles: Option<Vec<f64>>,
}

/// The percentiles a quantiles measure answers when the query names none.
const DEFAULT_QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

impl Query<'_> {
    pub fn url(&self) -> String {
        let mut u = format!(
            "/api/v1/views/{}/query?from={}&to={}&granularity={}ms",
            self.view.name, self.from, self.to, self.granularity_ms
        );
        if !self.group_by.is_empty() {
            u += &format!("&group_by={}", self.group_by.join(","));
        }
        for (d, v) in &self.filters {
            u += &format!("&filter={}", encode(&format!("{d}:{v}")));
        }
        let names: Vec<&str> = self
            .measures
            .iter()
            .map(|&m| self.view.measures[m].name.as_str())
            .collect();
        u += &format!("&measures={}", names.join(","));
        if let Some(qs) = &self.quantiles {
            let qs: Vec<String> = qs.iter().map(|q| q.to_string()).collect();
            u += &format!("&quantiles={}", qs.join(","));
        }
        u
    }

    /// The fold's answer: the view's base buckets starting in `[from, to)`
    /// that pass the filters (values of one dimension OR-ed, dimensions
    /// AND-ed), grouped and rolled up.
    pub fn truth(&self) -> Cells {
        let base = self.view.cells.range(self.from, self.to);
        let dims = &base.dimensions;
        let mut kept = base.clone();
        kept.map.retain(|(_, group), _| {
            dims.iter().enumerate().all(|(i, d)| {
                let allowed: Vec<&String> = self
                    .filters
                    .iter()
                    .filter(|(fd, _)| fd == d)
                    .map(|(_, v)| v)
                    .collect();
                allowed.is_empty() || group[i].as_ref().is_some_and(|g| allowed.contains(&g))
            })
        });
        let by: Vec<&str> = self.group_by.iter().map(String::as_str).collect();
        kept.group_by(&by).rollup(self.granularity_ms)
    }

    /// A point is shown when one of the requested measures is not its identity.
    fn shown(&self, cells: &[Cell]) -> bool {
        self.measures
            .iter()
            .any(|&m| match self.view.measures[m].agg.as_str() {
                "count" => cells[m].count > 0,
                "sum" => cells[m].sum_int != 0 || cells[m].sum_float != 0.0,
                "min" => cells[m].min.is_some(),
                "max" => cells[m].max.is_some(),
                "quantiles" => !cells[m].values.is_empty(),
                _ => !cells[m].distinct.is_empty(),
            })
    }

    fn check_value(
        &self,
        m: usize,
        got: &serde_json::Value,
        want: &Cell,
        ctx: &str,
        pf: &mut PfCount,
    ) {
        let measure = &self.view.measures[m];
        let name = &measure.name;
        match measure.agg.as_str() {
            "count" => assert_eq!(got.as_u64(), Some(want.count), "{ctx} {name}"),
            "sum" => {
                let exact = want.sum_int as f64 + want.sum_float;
                let got = got.as_f64().unwrap_or(f64::NAN);
                if want.sum_float == 0.0 {
                    assert_eq!(got, exact, "{ctx} {name}");
                } else {
                    // Float sums: the order of additions differs.
                    assert!(
                        (got - exact).abs() <= 1e-6 * exact.abs().max(1.0),
                        "{ctx} {name}: {got} vs {exact}"
                    );
                }
            }
            "min" => assert_eq!(got.as_f64(), want.min, "{ctx} {name}"),
            "max" => assert_eq!(got.as_f64(), want.max, "{ctx} {name}"),
            "quantiles" => {
                // An object, percentile (as Rust prints the number) -> value.
                let qs = self.quantiles.as_deref().unwrap_or(&DEFAULT_QUANTILES);
                let obj = got
                    .as_object()
                    .unwrap_or_else(|| panic!("{ctx} {name}: {got} is not an object"));
                assert_eq!(obj.len(), qs.len(), "{ctx} {name}: {got}");
                for &q in qs {
                    let v = &obj[&q.to_string()];
                    match want.quantile(q) {
                        None => assert!(v.is_null(), "{ctx} {name} q{q}: {v} for no values"),
                        Some(exact) => assert!(
                            v.as_f64().is_some_and(|v| within_quantile_error(v, exact)),
                            "{ctx} {name} q{q}: {v} vs exact {exact}"
                        ),
                    }
                }
            }
            _ => {
                let est = got.as_u64().unwrap_or(u64::MAX);
                assert!(
                    within_hll_error(est, want.distinct.len()),
                    "{ctx} {name}: estimate {est}, exact {}",
                    want.distinct.len()
                );
                // Sharper: the sketches merged across layers must be the
                // sketch of the union, so the estimate is the one Redis
                // itself gives for the exact set.
                assert_eq!(
                    est,
                    pf.count(&want.distinct),
                    "{ctx} {name}: vs Redis PFCOUNT of the exact set"
                );
            }
        }
    }

    /// Compare a response with the fold: every point and every group's totals.
    pub fn compare(&self, body: &serde_json::Value, pf: &mut PfCount) {
        let ctx = self.url();
        assert_eq!(body["degraded"], serde_json::json!([]), "{ctx}: {body}");
        let truth: BTreeMap<_, _> = self
            .truth()
            .map
            .into_iter()
            .filter(|(_, c)| self.shown(c))
            .collect();
        let mut totals: BTreeMap<Vec<Option<String>>, Vec<Cell>> = BTreeMap::new();
        for ((_, g), cells) in &truth {
            match totals.get_mut(g) {
                Some(acc) => acc.iter_mut().zip(cells).for_each(|(a, c)| a.merge(c)),
                None => {
                    totals.insert(g.clone(), cells.clone());
                }
            }
        }
        let series = body["series"]
            .as_array()
            .unwrap_or_else(|| panic!("{ctx}: no series in {body}"));
        assert_eq!(series.len(), totals.len(), "{ctx}: groups");
        let mut seen = HashSet::new();
        for s in series {
            let g: Vec<Option<String>> = self
                .group_by
                .iter()
                .map(|d| s["group"][d].as_str().map(str::to_owned))
                .collect();
            for p in s["points"].as_array().expect("points") {
                let t = p["t"].as_i64().expect("t");
                let want = truth
                    .get(&(t, g.clone()))
                    .unwrap_or_else(|| panic!("{ctx}: point {t} {g:?} is not in the fold"));
                assert!(seen.insert((t, g.clone())), "{ctx}: point {t} {g:?} twice");
                for &m in &self.measures {
                    let name = &self.view.measures[m].name;
                    self.check_value(
                        m,
                        &p["values"][name],
                        &want[m],
                        &format!("{ctx} t={t} g={g:?}"),
                        pf,
                    );
                }
            }
            let want = totals
                .get(&g)
                .unwrap_or_else(|| panic!("{ctx}: group {g:?} is not in the fold"));
            for &m in &self.measures {
                let name = &self.view.measures[m].name;
                self.check_value(
                    m,
                    &s["totals"][name],
                    &want[m],
                    &format!("{ctx} totals g={g:?}"),
                    pf,
                );
            }
        }
        assert_eq!(seen.len(), truth.len(), "{ctx}: points missing");
    }
}

/// Redis's own estimate of an exact set: `PFADD` into a scratch key, `PFCOUNT`.
pub struct PfCount {
    con: redis::Connection,
}

impl PfCount {
    pub fn connect(url: &str) -> PfCount {
        let con = redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .expect("redis for PFCOUNT");
        PfCount { con }
    }

    pub fn count(&mut self, set: &HashSet<String>) -> u64 {
        redis_pfcount(&mut self.con, set)
    }
}

pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A random query over `[start - max_late - 1 h, now + 1 h)`, where every event is.
pub fn random_query<'a>(
    rng: &mut StdRng,
    truth: &'a Truth,
    start_ms: i64,
    now_ms: i64,
    max_late_ms: i64,
) -> Query<'a> {
    let view = &truth.views[rng.gen_range(0..truth.views.len())];
    let g = view.cells.granularity_ms;
    let multiples: Vec<i64> = [1, 2, 5, 15, 60, 360, 1440]
        .into_iter()
        .filter(|k| 86_400_000 % (g * k) == 0)
        .collect();
    let granularity_ms = g * multiples[rng.gen_range(0..multiples.len())];
    let lo = start_ms - max_late_ms - 3_600_000;
    let hi = now_ms + 3_600_000;
    let (from, to) = if rng.gen_bool(0.2) {
        (lo, hi)
    } else {
        let from = rng.gen_range(lo..hi);
        let to = rng.gen_range(from + 1..=hi);
        if rng.gen_bool(0.5) {
            // Aligned to the granularity, as dashboards ask.
            (from.div_euclid(granularity_ms) * granularity_ms, to)
        } else {
            (from, to)
        }
    };
    let dims = &view.cells.dimensions;
    let group_by: Vec<String> = dims.iter().filter(|_| rng.gen_bool(0.5)).cloned().collect();
    let mut filters = Vec::new();
    if !dims.is_empty() && rng.gen_bool(0.4) {
        // Filter on values that occur (and sometimes one that does not).
        let d = rng.gen_range(0..dims.len());
        let values: Vec<&String> = view
            .cells
            .map
            .keys()
            .filter_map(|(_, g)| g[d].as_ref())
            .collect();
        for _ in 0..rng.gen_range(1..=2) {
            let v = if values.is_empty() || rng.gen_bool(0.1) {
                "no-such-value".to_owned()
            } else {
                values[rng.gen_range(0..values.len())].clone()
            };
            filters.push((dims[d].clone(), v));
        }
    }
    let mut measures: Vec<usize> = (0..view.measures.len())
        .filter(|_| rng.gen_bool(0.6))
        .collect();
    if measures.is_empty() {
        measures.push(0);
    }
    let quantiles = rng.gen_bool(0.5).then(|| {
        let mut qs: Vec<f64> = [0.0, 0.25, 0.5, 0.75, 0.95, 0.999, 1.0]
            .into_iter()
            .filter(|_| rng.gen_bool(0.5))
            .collect();
        if qs.is_empty() {
            qs.push(0.99);
        }
        qs
    });
    Query {
        view,
        from,
        to,
        granularity_ms,
        group_by,
        filters,
        measures,
        quantiles,
    }
}

/// `GET base + path_and_query`: the status and the JSON body (null when the
/// body is not JSON).
pub fn get(base: &str, path_and_query: &str) -> (u16, serde_json::Value) {
    let url = format!("{base}{path_and_query}");
    match ureq::get(&url).call() {
        Ok(resp) => (
            resp.status(),
            resp.into_json().unwrap_or(serde_json::Value::Null),
        ),
        Err(ureq::Error::Status(code, resp)) => {
            (code, resp.into_json().unwrap_or(serde_json::Value::Null))
        }
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Wait until the API's all-time event count (the `daily` view, which
/// counts every accepted event) equals the fold's, with nothing degraded.
/// `Ok(how long it took)`, or `Err(the last answer)` after `timeout`.
pub fn settle(base: &str, truth: &Truth, timeout: Duration) -> Result<Duration, String> {
    let want = truth.accepted;
    let from = now_ms() - 3 * 86_400_000;
    let to = now_ms() + 2 * 3_600_000;
    let started = Instant::now();
    let mut last = serde_json::Value::Null;
    while started.elapsed() < timeout {
        let (code, body) = get(
            base,
            &format!(
                "/api/v1/views/daily/query?from={from}&to={to}&granularity=1d&measures=events"
            ),
        );
        if code == 200 {
            let got: u64 = body["series"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["totals"]["events"].as_u64())
                .sum();
            if got == want && body["degraded"] == serde_json::json!([]) {
                return Ok(started.elapsed());
            }
            last = serde_json::json!({"got": got, "want": want, "degraded": body["degraded"]});
        } else {
            last = serde_json::json!({"status": code, "body": body});
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(last.to_string())
}
