//! A slice's changed cells built from its logs alone, without reading
//! Redis again: the counters' new values from the counter log laid over
//! the copy's cell, the sketches as what the quantile and sketch logs say
//! the flushes added.
//!
//! Why: a sync reads the logs with the versions in its first round trip.
//! A second one, for the changed cells' values, usually lands while the
//! next flush's script runs and waits for all of it, which is most of the
//! tail of produce-to-visible at 100,000 events/s (BENCHMARKS.md).
//!
//! Guarantee: with counters as of `until` or later (fields a flush did not
//! write keep the copy's value, which is what Redis holds: only flushes
//! write counters, and each logs what it wrote) and the sketch deltas from
//! the copy's version, a cell set from [`cells`] equals the cell read
//! whole, as [`super::read::read_cells`] would set it.

use std::collections::HashMap;

use tally_core::agg::{Agg, AggKind};
use tally_core::keys::{CellMember, CounterField, Part, SketchField, SUM_CARRY_UNIT};
use tally_core::view::ViewDef;

use super::read::{Added, CellValue};
use super::slice::SliceData;

/// The values of `cells` (members of the slice's cell set) of a slice the
/// copy holds as `old`: counters from `counters` (the counter log's
/// values by field) over `old`'s, sketches as `added` (both logs chained;
/// a cell with no delta gets an empty one). Returns the cells and how
/// many values did not parse.
pub(crate) fn cells(
    view: &ViewDef,
    old: &SliceData,
    cells: &[String],
    counters: &HashMap<&str, &str>,
    mut added: Added,
) -> (Vec<CellValue>, usize) {
    let mut skipped = 0;
    let mut out = Vec::with_capacity(cells.len());
    for c in cells.iter().filter_map(|c| CellMember::parse(c)) {
        let was = old.cell(c.bucket_ms, c.group);
        let aggs = view
            .measures
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let sketch = || SketchField::encode(c.bucket_ms, &m.name, c.group);
                match m.agg {
                    AggKind::Quantiles => Agg::Quantiles(
                        (added.quantiles.as_mut())
                            .and_then(|a| a.remove(&sketch()))
                            .unwrap_or_default(),
                    ),
                    AggKind::Distinct => Agg::Distinct(
                        (added.distinct.as_mut())
                            .and_then(|a| a.remove(&sketch()))
                            .unwrap_or_default(),
                    ),
                    kind => {
                        let logged = |part| {
                            counters
                                .get(
                                    CounterField::encode(c.bucket_ms, &m.name, part, c.group)
                                        .as_str(),
                                )
                                .copied()
                        };
                        overlay(kind, was.map(|w| &w[i]), logged).unwrap_or_else(|| {
                            skipped += 1;
                            Agg::empty(kind)
                        })
                    }
                }
            })
            .collect();
        out.push(CellValue {
            bucket: c.bucket_ms,
            group: c.group.to_owned(),
            aggs,
        });
    }
    skipped += cells.len() - out.len();
    (out, skipped)
}

/// A counter measure's aggregate: the parts `logged` gives, the others as
/// `old` holds them (absent: the identity). `None`: a logged value that
/// does not parse.
fn overlay<'a>(
    kind: AggKind,
    old: Option<&Agg>,
    logged: impl Fn(Part) -> Option<&'a str>,
) -> Option<Agg> {
    let int = |part| logged(part).map(|v| v.trim().parse::<i64>().ok());
    let float = |part| logged(part).map(|v| v.trim().parse::<f64>().ok());
    let old = old.cloned().unwrap_or_else(|| Agg::empty(kind));
    Some(match (kind, old) {
        (AggKind::Count, Agg::Count(n)) => match int(Part::Count) {
            Some(v) => Agg::Count(v?.max(0) as u64),
            None => Agg::Count(n),
        },
        (AggKind::Sum, Agg::Sum { int: i, float: f }) => {
            // The script logs the value and its carry together.
            let i = match (int(Part::SumInt), int(Part::SumCarry)) {
                (Some(v), Some(c)) => i128::from(v?) + i128::from(c?) * SUM_CARRY_UNIT,
                (None, None) => i,
                _ => return None,
            };
            let f = match float(Part::SumFloat) {
                Some(v) => v?,
                None => f,
            };
            Agg::Sum { int: i, float: f }
        }
        (AggKind::Min, Agg::Min(m)) => Agg::Min(match float(Part::Min) {
            Some(v) => Some(v?),
            None => m,
        }),
        (AggKind::Max, Agg::Max(m)) => Agg::Max(match float(Part::Max) {
            Some(v) => Some(v?),
            None => m,
        }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(parts: &'a [(Part, &'a str)]) -> impl Fn(Part) -> Option<&'a str> {
        move |p| parts.iter().find(|(q, _)| *q == p).map(|(_, v)| *v)
    }

    #[test]
    fn logged_parts_replace_the_copys_and_the_others_stay() {
        let sum = Agg::Sum {
            int: 40,
            float: 0.5,
        };
        // Only the float part written: the integer part stays.
        assert_eq!(
            overlay(AggKind::Sum, Some(&sum), get(&[(Part::SumFloat, "2.25")])),
            Some(Agg::Sum {
                int: 40,
                float: 2.25
            })
        );
        // The integer part with its carry.
        assert_eq!(
            overlay(
                AggKind::Sum,
                Some(&sum),
                get(&[(Part::SumInt, "-3"), (Part::SumCarry, "1")])
            ),
            Some(Agg::Sum {
                int: SUM_CARRY_UNIT - 3,
                float: 0.5
            })
        );
        assert_eq!(
            overlay(
                AggKind::Count,
                Some(&Agg::Count(4)),
                get(&[(Part::Count, "9")])
            ),
            Some(Agg::Count(9))
        );
        // A min no flush moved keeps the copy's; a new cell starts empty.
        assert_eq!(
            overlay(AggKind::Min, Some(&Agg::Min(Some(1.5))), get(&[])),
            Some(Agg::Min(Some(1.5)))
        );
        assert_eq!(
            overlay(AggKind::Max, None, get(&[(Part::Max, "7")])),
            Some(Agg::Max(Some(7.0)))
        );
        assert_eq!(overlay(AggKind::Count, None, get(&[])), Some(Agg::Count(0)));
    }

    #[test]
    fn a_value_that_does_not_parse_or_half_a_sum_is_refused() {
        assert_eq!(
            overlay(AggKind::Count, None, get(&[(Part::Count, "x")])),
            None
        );
        assert_eq!(
            overlay(AggKind::Sum, None, get(&[(Part::SumInt, "3")])),
            None
        );
    }
}
