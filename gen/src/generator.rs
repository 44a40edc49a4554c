//! The generator: a [`Shape`] and a seed to a deterministic stream of Kafka
//! records. The same shape, seed and sequence of `now_ms` give the same bytes
//! on every run. Every record flagged `valid` is accepted by the platform
//! under the shape's limits; every other one is rejected with the reason of
//! its [`MalformedKind`] (the tests check both against core's decoder).
//!
//! JSON is written straight into a reused buffer (no `serde_json::Value`), so
//! one core generates well over 100,000 events per second.

use std::collections::VecDeque;
use std::io::Write;

use crate::json;
use crate::malformed::{self, MalformedKind};
use crate::rng::{Rng, Zipf};
use crate::shape::{Shape, ShapeError, Weighted};

/// One generated Kafka record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The record key: the user id, or the event id for anonymous events.
    pub key: Vec<u8>,
    /// The record value: an event in the event format
    /// (docs/ARCHITECTURE.md), or a malformed record.
    pub payload: Vec<u8>,
    /// The Kafka timestamp (CreateTime) to send the record with; -1 (Kafka's
    /// "no timestamp") for a record without one.
    pub kafka_ts_ms: i64,
    /// Whether the generator meant it to be a valid event.
    pub valid: bool,
    /// For a malformed record, what is wrong with it.
    pub kind: Option<MalformedKind>,
}

/// A deterministic source of [`Generated`] records.
#[derive(Debug, Clone)]
pub struct Generator {
    shape: Shape,
    rng: Rng,
    seed: u64,
    n: u64,
    types: Vec<(String, f64)>,
    countries: Vec<(String, f64)>,
    kinds: Vec<MalformedKind>,
    pages: Zipf,
    users: Zipf,
    buf: Vec<u8>,
    id: String,
    /// With retries: the last valid events (key, payload, event time).
    recent: VecDeque<Sent>,
    retries: u64,
}

/// A valid event sent, kept for a retry.
#[derive(Debug, Clone)]
struct Sent {
    key: Vec<u8>,
    payload: Vec<u8>,
    time_ms: i64,
}

/// Names with cumulative weights, for picking by one uniform draw.
fn cumulative(list: &[Weighted]) -> Vec<(String, f64)> {
    let total: f64 = list.iter().map(|w| w.weight).sum();
    let mut acc = 0.0;
    list.iter()
        .map(|w| {
            acc += w.weight / total;
            (w.name.clone(), acc)
        })
        .collect()
}

fn pick(list: &[(String, f64)], u: f64) -> &str {
    list.iter()
        .find(|(_, c)| u < *c)
        .or(list.last())
        .map_or("", |(n, _)| n.as_str())
}

impl Generator {
    /// A generator of `shape` (checked with [`Shape::check`]) seeded by `seed`.
    pub fn new(shape: Shape, seed: u64) -> Result<Generator, ShapeError> {
        shape.check()?;
        let kinds = if shape.malformed_kinds.is_empty() {
            MalformedKind::ALL.to_vec()
        } else {
            shape.malformed_kinds.clone()
        };
        Ok(Generator {
            types: cumulative(&shape.event_types),
            countries: cumulative(&shape.countries),
            pages: Zipf::new(shape.pages, shape.page_skew),
            users: Zipf::new(shape.users, shape.user_skew),
            kinds,
            rng: Rng::new(seed),
            seed,
            n: 0,
            buf: Vec::with_capacity(512),
            id: String::with_capacity(32),
            recent: VecDeque::new(),
            retries: 0,
            shape,
        })
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// How many records this generator has made (retries included).
    pub fn count(&self) -> u64 {
        self.n + self.retries
    }

    /// The next record, stamped with Kafka time `now_ms`.
    pub fn next(&mut self, now_ms: i64) -> Generated {
        if let Some(retry) = self.retry(now_ms) {
            return retry;
        }
        self.n += 1;
        self.id.clear();
        {
            use std::fmt::Write as _;
            let _ = write!(self.id, "e{:x}-{}", self.seed, self.n);
        }
        if self.rng.chance(self.shape.malformed_share) {
            let kind = self.kinds[self.rng.below(self.kinds.len() as u64) as usize];
            malformed::write(
                &mut self.buf,
                kind,
                &self.id,
                now_ms,
                &self.shape.limits,
                &mut self.rng,
            );
            return Generated {
                key: self.id.as_bytes().to_vec(),
                payload: self.buf.clone(),
                kafka_ts_ms: kind.kafka_time(now_ms, &mut self.rng),
                valid: false,
                kind: Some(kind),
            };
        }
        let (key, time_ms) = self.write_event(now_ms);
        if self.shape.retry_share > 0.0 {
            if self.recent.len() as u64 >= self.shape.retry_span {
                self.recent.pop_front();
            }
            self.recent.push_back(Sent {
                key: key.clone(),
                payload: self.buf.clone(),
                time_ms,
            });
        }
        Generated {
            key,
            payload: self.buf.clone(),
            kafka_ts_ms: now_ms,
            valid: true,
            kind: None,
        }
    }

    /// A retry of a recent valid event, if one is due and its event time is
    /// still valid at `now` (`[events] max_past`, `max_future`).
    fn retry(&mut self, now: i64) -> Option<Generated> {
        if self.recent.is_empty() || !self.rng.chance(self.shape.retry_share) {
            return None;
        }
        let sent = &self.recent[self.rng.below(self.recent.len() as u64) as usize];
        let limits = &self.shape.limits;
        let valid = sent.time_ms >= now.saturating_sub(limits.max_past_ms)
            && sent.time_ms <= now.saturating_add(limits.max_future_ms);
        self.retries += u64::from(valid);
        valid.then(|| Generated {
            key: sent.key.clone(),
            payload: sent.payload.clone(),
            kafka_ts_ms: now,
            valid: true,
            kind: None,
        })
    }

    /// Event time for Kafka time `now`: mostly just behind it, sometimes
    /// jittered either side (out of order), sometimes late by up to `max_late`.
    fn event_time(&mut self, now: i64) -> i64 {
        let s = &self.shape;
        let u = self.rng.unit();
        if u < s.late_share {
            // Skewed toward "a little late": most late events are minutes to
            // hours behind, a few are days behind.
            let f = self.rng.unit();
            now - (f * f * s.max_late.0 as f64) as i64
        } else if u < s.late_share + s.out_of_order_share {
            let ahead = s.max_jitter.0.min(s.limits.max_future_ms);
            now + self.rng.between(-s.max_jitter.0, ahead)
        } else {
            now - self.rng.below(1000.min(s.limits.max_past_ms as u64 + 1)) as i64
        }
    }

    /// Write a valid event into `buf`; returns the key and the event time.
    fn write_event(&mut self, now: i64) -> (Vec<u8>, i64) {
        let time = self.event_time(now);
        let etype_at = self.rng.unit();
        let page = self.pages.sample(&mut self.rng);
        let anonymous = self.rng.chance(self.shape.anonymous_share);
        let user = self.users.sample(&mut self.rng);
        let rfc = self.rng.chance(self.shape.rfc3339_share);
        let no_country = self.rng.chance(self.shape.no_country_share);
        let country_at = self.rng.unit();
        let mobile = self.rng.below(3);
        let out = &mut self.buf;
        out.clear();
        out.extend_from_slice(b"{\"event_id\":");
        json::string(out, &self.id);
        out.extend_from_slice(b",\"event_type\":");
        let etype = pick(&self.types, etype_at);
        json::string(out, etype);
        out.extend_from_slice(b",\"timestamp\":");
        if !(rfc && json::rfc3339(out, time)) {
            let _ = write!(out, "{time}");
        }
        let key = if anonymous {
            self.id.as_bytes().to_vec()
        } else {
            let _ = write!(out, ",\"user_id\":\"u{user}\"");
            format!("u{user}").into_bytes()
        };
        let _ = write!(out, ",\"properties\":{{\"page\":\"/p{page}\"");
        if !no_country {
            out.extend_from_slice(b",\"country\":");
            json::string(out, pick(&self.countries, country_at));
        }
        match mobile {
            0 => out.extend_from_slice(b",\"mobile\":true"),
            1 => out.extend_from_slice(b",\"mobile\":false"),
            _ => {}
        }
        let (d, a) = (self.shape.duration, self.shape.amount);
        match etype {
            "page_view" => {
                let duration = self.rng.between(d.min, d.max);
                let scroll = self.rng.below(401) as f64 / 4.0;
                let latency = latency_ms(&mut self.rng);
                let _ = write!(
                    out,
                    ",\"duration\":{duration},\"scroll\":{scroll:.2},\"latency_ms\":{latency:.3}"
                );
            }
            "click" => {
                let duration = self.rng.between(d.min, d.max);
                let latency = latency_ms(&mut self.rng);
                let _ = write!(out, ",\"duration\":{duration},\"latency_ms\":{latency:.3}");
            }
            "purchase" => {
                let amount = self.rng.between(a.min, a.max);
                let _ = write!(out, ",\"amount\":{amount}");
            }
            _ => {}
        }
        out.extend_from_slice(b"}}");
        (key, time)
    }
}

/// A latency in milliseconds, log-uniform from 0.1 ms to 10 s (five orders
/// of magnitude, as request latencies spread), always written with a
/// fractional part so the property is a float everywhere.
fn latency_ms(rng: &mut Rng) -> f64 {
    10f64.powf(rng.below(50_001) as f64 / 10_000.0 - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_for_a_seed() {
        let mut a = Generator::new(Shape::default(), 9).unwrap();
        let mut b = Generator::new(Shape::default(), 9).unwrap();
        let mut c = Generator::new(Shape::default(), 10).unwrap();
        let mut differ = false;
        for i in 0..10_000 {
            let (x, y, z) = (a.next(i), b.next(i), c.next(i));
            assert_eq!(x, y);
            differ |= x != z;
        }
        assert!(differ);
    }

    #[test]
    fn retries_repeat_recent_events() {
        let shape = Shape {
            retry_share: 0.1,
            retry_span: 50,
            malformed_share: 0.0,
            ..Shape::default()
        };
        let mut g = Generator::new(shape, 3).unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut retries = 0;
        for i in 0..10_000 {
            let r = g.next(1_704_067_200_000 + i);
            if !seen.insert(r.payload.clone()) {
                retries += 1;
            }
        }
        assert!((700..1300).contains(&retries), "{retries}");
    }

    #[test]
    fn valid_records_are_json_events() {
        let mut g = Generator::new(Shape::default(), 1).unwrap();
        for i in 0..10_000 {
            let r = g.next(1_704_067_200_000 + i);
            if r.valid {
                let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                assert!(v["event_id"].is_string() && v["properties"]["page"].is_string());
            }
        }
    }
}
