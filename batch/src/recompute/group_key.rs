//! A group's bucket and dimension texts packed into one integer, the key
//! the plan groups by when every dimension is a string.
//!
//! Polars groups several key columns by row-encoding each row's keys into
//! bytes (the strings copied, then hashed and compared as bytes); one
//! integer key takes its single-key path instead, an integer hash table.
//! Each dimension's text gets a code from a table built as the rows stream
//! by (Polars' concurrent string-to-code table, one per dimension and plan,
//! so nothing outlives the run), and the key is the bucket's index within
//! the day followed by one 32-bit code per dimension (0 for a missing
//! value). Codes are exact: two texts never share one, so the groups are
//! the groups of the texts. After the group-by [`Packing::bucket`] and
//! [`Packing::text`] turn the key back into the bucket and the texts.

use std::sync::Arc;

use polars::prelude::*;
use polars_dtype::categorical::CategoricalMapping;

/// The most dimensions one key holds: the bucket's index takes the top 32
/// bits of an `Int128` (at most one day of millisecond buckets, < 2^27),
/// each dimension 32 more.
pub(super) const MAX_DIMENSIONS: usize = 3;

/// Codes are 1 + the table's index, so the table holds at most this many
/// texts per dimension (a 32-bit slot; 0 means missing).
const MAX_TEXTS: usize = (u32::MAX - 1) as usize;

/// How one plan packs its keys: the day's first bucket, the granularity,
/// and one text table per dimension.
#[derive(Clone)]
pub(super) struct Packing {
    /// Index of the day's first bucket since the epoch (`day_ms / g`, floored).
    first: i64,
    g: i64,
    tables: Vec<Arc<CategoricalMapping>>,
}

impl std::fmt::Debug for Packing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packing")
            .field("first", &self.first)
            .field("g", &self.g)
            .field("dimensions", &self.tables.len())
            .finish()
    }
}

/// Slots of the per-column cache of views to codes.
const SEEN: usize = 1024;

/// A view's slot in the cache: a multiplicative hash's top 10 bits.
fn seen_slot(view: u128) -> usize {
    let folded = (view as u64) ^ ((view >> 64) as u64);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SEEN.trailing_zeros())) as usize
}

impl Packing {
    /// The packing of `dimensions` string dimensions (1 to
    /// [`MAX_DIMENSIONS`]) for buckets of `g` ms of the day starting at
    /// `day_ms`.
    pub(super) fn new(day_ms: i64, g: i64, dimensions: usize) -> Packing {
        debug_assert!((1..=MAX_DIMENSIONS).contains(&dimensions));
        Packing {
            first: day_ms.div_euclid(g),
            g,
            tables: (0..dimensions)
                .map(|_| {
                    Arc::new(CategoricalMapping::with_hasher(
                        MAX_TEXTS,
                        Default::default(),
                    ))
                })
                .collect(),
        }
    }

    /// One dimension fits an `Int64` (index and code); more take an `Int128`.
    fn dtype(&self) -> DataType {
        if self.tables.len() == 1 {
            DataType::Int64
        } else {
            DataType::Int128
        }
    }

    /// Bits below the bucket's index.
    fn shift(&self) -> u32 {
        32 * self.tables.len() as u32
    }

    /// The key of each row from its `time_ms` and its dimensions' string
    /// columns (in the view's order).
    pub(super) fn key(&self, time_ms: Expr, dimensions: &[Expr]) -> Expr {
        let p = self.clone();
        let dtype = self.dtype();
        time_ms.map_many(
            move |cs: &mut [Column]| p.keys_of(cs),
            dimensions,
            move |_, fields| Ok(Field::new(fields[0].name().clone(), dtype.clone())),
        )
    }

    fn keys_of(&self, cs: &[Column]) -> PolarsResult<Column> {
        let time = cs[0].as_materialized_series().i64()?.rechunk();
        let time = time.downcast_as_array();
        let mut keys: Vec<i128> = Vec::with_capacity(time.len());
        for t in time.iter() {
            let Some(t) = t else {
                polars_bail!(ComputeError: "a kept row without an event time");
            };
            let index = t.div_euclid(self.g) - self.first;
            keys.push(i128::from(index) << self.shift());
        }
        for (i, (c, table)) in cs[1..].iter().zip(&self.tables).enumerate() {
            let at = 32 * (self.tables.len() - 1 - i) as u32;
            let texts = c.as_materialized_series().str()?.rechunk();
            let texts = texts.downcast_as_array();
            // A view (length and inline bytes, or length, prefix, buffer and
            // offset) names one text within its array, and a dictionary-
            // encoded page repeats views: a small cache on the view saves
            // hashing and comparing the text for most rows.
            let mut seen = [(0u128, 0u32); SEEN];
            let rows = texts.iter().zip(texts.views().iter());
            for (k, (text, view)) in keys.iter_mut().zip(rows) {
                let Some(text) = text else { continue };
                let view = view.as_u128();
                let slot = &mut seen[seen_slot(view)];
                let code = if slot.1 != 0 && slot.0 == view {
                    slot.1
                } else {
                    let code = table.insert_cat(text)? + 1;
                    *slot = (view, code);
                    code
                };
                *k |= i128::from(code) << at;
            }
        }
        let name = cs[0].name().clone();
        Ok(if self.tables.len() == 1 {
            // Fits: index < 2^27 above a 32-bit code.
            let keys: Vec<i64> = keys.into_iter().map(|k| k as i64).collect();
            Int64Chunked::from_vec(name, keys).into_column()
        } else {
            Int128Chunked::from_vec(name, keys).into_column()
        })
    }

    /// The keys of a column made by [`Packing::key`], as `i128`.
    fn keys(c: &Column) -> PolarsResult<Vec<i128>> {
        let s = c.as_materialized_series();
        Ok(match s.dtype() {
            DataType::Int64 => s.i64()?.into_no_null_iter().map(i128::from).collect(),
            _ => s.i128()?.into_no_null_iter().collect(),
        })
    }

    /// The bucket (its start, ms since the epoch) of a packed key.
    pub(super) fn bucket(&self, key: Expr) -> Expr {
        let (first, g, shift) = (self.first, self.g, self.shift());
        key.map(
            move |c: Column| {
                let buckets: Vec<i64> = Packing::keys(&c)?
                    .into_iter()
                    .map(|k| (first + (k >> shift) as i64) * g)
                    .collect();
                Ok(Int64Chunked::from_vec(c.name().clone(), buckets).into_column())
            },
            |_, f| Ok(Field::new(f.name().clone(), DataType::Int64)),
        )
    }

    /// The text of dimension `i` of a packed key (null where it was missing).
    pub(super) fn text(&self, key: Expr, i: usize) -> Expr {
        let table = self.tables[i].clone();
        let at = 32 * (self.tables.len() - 1 - i) as u32;
        key.map(
            move |c: Column| {
                let mut texts = Vec::with_capacity(c.len());
                for k in Packing::keys(&c)? {
                    // The low 32 bits: the cast truncates.
                    let code = (k >> at) as u32;
                    texts.push(match code {
                        0 => None,
                        code => match table.cat_to_str(code - 1) {
                            Some(s) => Some(s),
                            None => polars_bail!(ComputeError: "a group key with an unknown code"),
                        },
                    });
                }
                let out: StringChunked = texts.into_iter().collect();
                Ok(out.with_name(c.name().clone()).into_column())
            },
            |_, f| Ok(Field::new(f.name().clone(), DataType::String)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn frame() -> DataFrame {
        df!(
            "time_ms" => [20_000 * DAY + 5, 20_000 * DAY + 61_000, 20_000 * DAY + 5, 20_000 * DAY + DAY - 1],
            "a" => [Some("x"), Some("y"), Some("x"), None],
            "b" => [Some("p"), Some("p"), None, Some("")],
        )
        .expect("a frame")
    }

    #[test]
    fn keys_of_equal_texts_are_equal_and_unpack_to_them() {
        for dims in [1, 2] {
            let p = Packing::new(20_000 * DAY, 60_000, dims);
            let texts: Vec<Expr> = ["a", "b"][..dims].iter().map(|c| col(*c)).collect();
            let out = frame()
                .lazy()
                .with_column(p.key(col("time_ms"), &texts).alias("key"))
                .with_column(p.bucket(col("key")).alias("bucket"))
                .with_columns(
                    (0..dims)
                        .map(|i| p.text(col("key"), i).alias(format!("t{i}")))
                        .collect::<Vec<_>>(),
                )
                .collect()
                .expect("the plan runs");
            let bucket: Vec<i64> = out
                .column("bucket")
                .unwrap()
                .i64()
                .unwrap()
                .into_no_null_iter()
                .collect();
            let first = 20_000 * DAY;
            assert_eq!(bucket, [first, first + 60_000, first, first + DAY - 60_000]);
            for (i, c) in ["a", "b"][..dims].iter().enumerate() {
                let want = frame().column(c).unwrap().as_materialized_series().clone();
                let got = out
                    .column(&format!("t{i}"))
                    .unwrap()
                    .as_materialized_series()
                    .clone();
                assert!(got.equals_missing(&want), "dimension {c}: {got:?}");
            }
            let keys = out.column("key").unwrap().as_materialized_series().clone();
            let (k0, k2) = (keys.get(0).unwrap(), keys.get(2).unwrap());
            // Rows 0 and 2 differ only in `b` (set, then missing).
            assert_eq!(k0 == k2, dims == 1);
        }
    }

    #[test]
    fn repeated_long_and_short_texts_unpack_to_themselves() {
        // Texts longer than a view's 12 inline bytes, sharing prefixes,
        // repeated across rows, with missing values between them.
        let texts: Vec<Option<String>> = (0..5_000)
            .map(|i| match i % 7 {
                0 => None,
                1 => Some(format!("a-shared-long-prefix/{}", i % 13)),
                2 => Some(format!("short{}", i % 3)),
                _ => Some(format!("a-shared-long-prefix/{}", i % 5)),
            })
            .collect();
        let times: Vec<i64> = (0..5_000).map(|i| i * 1_000).collect();
        let f = df!("time_ms" => times, "a" => texts.clone()).expect("a frame");
        let p = Packing::new(0, 60_000, 1);
        let out = f
            .lazy()
            .with_column(p.key(col("time_ms"), &[col("a")]).alias("key"))
            .select([p.text(col("key"), 0).alias("t")])
            .collect()
            .expect("the plan runs");
        let got: Vec<Option<String>> = out
            .column("t")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect();
        assert_eq!(got, texts);
    }

    #[test]
    fn a_missing_text_and_an_empty_one_are_different_keys() {
        let p = Packing::new(0, 60_000, 1);
        let f = df!("time_ms" => [1i64, 2], "a" => [None, Some("")]).expect("a frame");
        let out = f
            .lazy()
            .select([p.key(col("time_ms"), &[col("a")]).alias("key")])
            .collect()
            .expect("the plan runs");
        let keys: Vec<i64> = out
            .column("key")
            .unwrap()
            .i64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_ne!(keys[0], keys[1]);
    }
}
