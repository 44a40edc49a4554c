//! Promoted properties: an event property as a typed top-level column of an
//! archive file (format v2), so that any engine reads it as a plain column
//! instead of searching the `props` list.
//!
//! A file promotes every property a configured view uses (a dimension, a
//! measure's field, a filter key), whether or not it occurs, plus every other
//! key that has a value in at least [`FREQUENT_SHARE`] of the file's valid
//! rows, most frequent first, up to [`MAX_COLUMNS`] columns in all. A
//! promoted column holds, per row, the value [`tally_core::event::Event::property`]
//! gives (the first occurrence of the key; null when absent or null). A key
//! whose values have one type in the file is the column `properties.<key>`;
//! a key with several types is one column per type,
//! `properties.<key>:<type>` (`str`, `int`, `float`, `bool`), each holding
//! the rows of its type.
//!
//! The footer's `tally.promoted` entry lists every promoted key with its
//! columns (an empty list: no row of the file has a value for it). A reader
//! needs `props` only for a key the list lacks.

use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, StringArray, StructArray,
};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tally_core::config::Config;
use tally_core::view::FieldPath;

use crate::archive_file::error::FileError;

/// Key of the footer metadata that lists the promoted keys (JSON).
pub(crate) const PROMOTED_KEY: &str = "tally.promoted";
/// Key of the footer metadata that holds the format version (`2`).
pub(crate) const FORMAT_KEY: &str = "tally.format";
/// Keys with a value in at least this share of a file's valid rows are
/// promoted even if no view uses them.
pub(crate) const FREQUENT_SHARE: f64 = 0.10;
/// Frequent keys are promoted while a file has at most this many promoted
/// columns (the views' own keys are promoted regardless).
pub const MAX_COLUMNS: usize = 128;

/// The type of a property value, as it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PropType {
    Str,
    Int,
    Float,
    Bool,
}

impl PropType {
    pub const ALL: [PropType; 4] = [
        PropType::Str,
        PropType::Int,
        PropType::Float,
        PropType::Bool,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PropType::Str => "str",
            PropType::Int => "int",
            PropType::Float => "float",
            PropType::Bool => "bool",
        }
    }

    /// Index into per-type arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One promoted key of a file and its columns, one per type it has there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotedKey {
    pub key: String,
    /// `(type, column name)`; empty when the key has no value in the file.
    pub columns: Vec<(PropType, String)>,
}

/// The column name of `key` holding values of `ty`, when the key has
/// `types` types in the file.
pub(crate) fn column_name(key: &str, ty: PropType, types: usize) -> String {
    if types > 1 {
        format!("properties.{key}:{}", ty.name())
    } else {
        format!("properties.{key}")
    }
}

/// The keys every file promotes: the properties the configured views read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Promote {
    keys: BTreeSet<String>,
    /// Write the format v1 (no promoted columns, no v2 metadata): for tests
    /// of stores that hold both formats.
    legacy_v1: bool,
}

impl Promote {
    /// The properties any view of `cfg` uses.
    pub fn of(cfg: &Config) -> Promote {
        Promote::keys(cfg.views.iter().flat_map(|v| {
            let fields = v
                .dimensions
                .iter()
                .cloned()
                .chain(v.measures.iter().filter_map(|m| m.field.clone()))
                .chain(v.parsed_filter().into_iter().map(|(p, _)| p));
            fields.filter_map(|f| match f {
                FieldPath::Property(k) => Some(k),
                _ => None,
            })
        }))
    }

    /// Always promote these keys.
    pub fn keys(keys: impl IntoIterator<Item = String>) -> Promote {
        Promote {
            keys: keys.into_iter().collect(),
            legacy_v1: false,
        }
    }

    /// Write format v1 files: no promoted columns (tests of mixed stores).
    #[doc(hidden)]
    pub fn legacy_v1() -> Promote {
        Promote {
            keys: BTreeSet::new(),
            legacy_v1: true,
        }
    }

    pub(crate) fn is_legacy_v1(&self) -> bool {
        self.legacy_v1
    }

    /// Which keys of a file to promote, given how many valid rows have a
    /// value of each type for each key (`counts[key][type]`, first occurrence
    /// per row) out of `valid_rows`.
    pub fn choose(&self, counts: &BTreeMap<&str, [u64; 4]>, valid_rows: u64) -> Vec<PromotedKey> {
        if self.legacy_v1 {
            return Vec::new();
        }
        let entry = |key: &str| {
            let types: Vec<PropType> = counts.get(key).map_or(Vec::new(), |c| {
                PropType::ALL
                    .into_iter()
                    .filter(|t| c[t.index()] > 0)
                    .collect()
            });
            let n = types.len();
            PromotedKey {
                key: key.to_owned(),
                columns: types
                    .into_iter()
                    .map(|t| (t, column_name(key, t, n)))
                    .collect(),
            }
        };
        // A key whose column name another key already took (`a` with
        // several types against a key named `a:int`) stays in `props` only.
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut unique = |e: &PromotedKey| {
            let free = e.columns.iter().all(|(_, c)| !names.contains(c));
            if free {
                names.extend(e.columns.iter().map(|(_, c)| c.clone()));
            }
            free
        };
        let mut out: Vec<PromotedKey> = self
            .keys
            .iter()
            .map(|k| entry(k))
            .filter(|e| unique(e))
            .collect();
        let mut width: usize = out.iter().map(|k| k.columns.len()).sum();
        let threshold = (valid_rows as f64 * FREQUENT_SHARE).ceil().max(1.0) as u64;
        let mut frequent: Vec<(&str, u64)> = counts
            .iter()
            .filter(|(k, _)| !self.keys.contains(**k))
            .map(|(k, c)| (*k, c.iter().sum::<u64>()))
            .filter(|&(_, n)| n >= threshold)
            .collect();
        frequent.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for (k, _) in frequent {
            let e = entry(k);
            if width + e.columns.len() <= MAX_COLUMNS && unique(&e) {
                width += e.columns.len();
                out.push(e);
            }
        }
        out
    }
}

/// The promoted keys listed in a file's footer metadata; `None` for a file
/// without the list (format v1).
pub(crate) fn promoted_in(
    meta: &parquet::file::metadata::ParquetMetaData,
) -> Option<Vec<PromotedKey>> {
    let kv = meta.file_metadata().key_value_metadata()?;
    let v = kv
        .iter()
        .find(|k| k.key == PROMOTED_KEY)?
        .value
        .as_deref()?;
    serde_json::from_str(v).ok()
}

/// The `props` list of a batch, for promoting keys out of it.
#[derive(Debug)]
pub(crate) struct PropsView<'a> {
    list: &'a ListArray,
    key: &'a StringArray,
    str: &'a StringArray,
    int: &'a Int64Array,
    float: &'a Float64Array,
    bool: &'a BooleanArray,
}

impl<'a> PropsView<'a> {
    pub(crate) fn of(list: &'a ListArray) -> Result<Self, FileError> {
        let bad = |c: &str| FileError::Malformed {
            path: String::new(),
            problem: format!("column `props.{c}` is missing or mistyped"),
        };
        let s = list
            .values()
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| bad("item"))?;
        macro_rules! field {
            ($i:literal, $name:literal, $ty:ty) => {
                s.column($i)
                    .as_any()
                    .downcast_ref::<$ty>()
                    .ok_or_else(|| bad($name))?
            };
        }
        Ok(PropsView {
            list,
            key: field!(0, "key", StringArray),
            str: field!(1, "str", StringArray),
            int: field!(2, "int", Int64Array),
            float: field!(3, "float", Float64Array),
            bool: field!(4, "bool", BooleanArray),
        })
    }

    /// The type of property entry `j`, `None` for a null value.
    fn type_of(&self, j: usize) -> Option<PropType> {
        if self.str.is_valid(j) {
            Some(PropType::Str)
        } else if self.int.is_valid(j) {
            Some(PropType::Int)
        } else if self.float.is_valid(j) {
            Some(PropType::Float)
        } else if self.bool.is_valid(j) {
            Some(PropType::Bool)
        } else {
            None
        }
    }

    /// Calls `f(row, entry)` for the first entry of each key in each row.
    fn for_each_first(&self, mut f: impl FnMut(usize, usize, &'a str)) {
        let offsets = self.list.value_offsets();
        let mut row_keys: Vec<&str> = Vec::new();
        for r in 0..self.list.len() {
            let (s, e) = (offsets[r] as usize, offsets[r + 1] as usize);
            row_keys.clear();
            for j in s..e {
                let k = self.key.value(j);
                // Rows hold a handful of properties: a scan beats a set.
                if row_keys.contains(&k) {
                    continue;
                }
                row_keys.push(k);
                f(r, j, k);
            }
        }
    }

    /// Per key: how many rows valid per `reject` (null) have a value of
    /// each type (the first occurrence in the row counts).
    pub(crate) fn counts(&self, reject: &StringArray) -> (BTreeMapCounts<'a>, u64) {
        let mut counts: FxHashMap<&'a str, [u64; 4]> = FxHashMap::default();
        self.for_each_first(|r, j, k| {
            if reject.is_null(r) {
                if let Some(t) = self.type_of(j) {
                    counts.entry(k).or_default()[t.index()] += 1;
                }
            }
        });
        (counts.into_iter().collect(), reject.null_count() as u64)
    }

    /// The promoted columns of `keys`, in their order.
    pub(crate) fn columns(&self, keys: &[PromotedKey]) -> Vec<ArrayRef> {
        enum B {
            Str(StringBuilder),
            Int(Int64Builder),
            Float(Float64Builder),
            Bool(BooleanBuilder),
        }
        // Per key: its builders by type (index into `builders`).
        let mut slots: FxHashMap<&str, [Option<usize>; 4]> = FxHashMap::default();
        let mut builders: Vec<(B, usize)> = Vec::new();
        for k in keys {
            let slot = slots.entry(k.key.as_str()).or_default();
            for (t, _) in &k.columns {
                slot[t.index()] = Some(builders.len());
                let b = match t {
                    PropType::Str => B::Str(StringBuilder::new()),
                    PropType::Int => B::Int(Int64Builder::new()),
                    PropType::Float => B::Float(Float64Builder::new()),
                    PropType::Bool => B::Bool(BooleanBuilder::new()),
                };
                builders.push((b, 0));
            }
        }
        fn pad(b: &mut B, n: usize) {
            match b {
                B::Str(b) => b.append_nulls(n),
                B::Int(b) => b.append_nulls(n),
                B::Float(b) => b.append_nulls(n),
                B::Bool(b) => b.append_nulls(n),
            }
        }
        if !builders.is_empty() {
            self.for_each_first(|r, j, k| {
                let Some(slot) = slots.get(k) else { return };
                let Some(t) = self.type_of(j) else { return };
                let Some(i) = slot[t.index()] else { return };
                let (b, filled) = &mut builders[i];
                pad(b, r - *filled);
                *filled = r + 1;
                match b {
                    B::Str(b) => b.append_value(self.str.value(j)),
                    B::Int(b) => b.append_value(self.int.value(j)),
                    B::Float(b) => b.append_value(self.float.value(j)),
                    B::Bool(b) => b.append_value(self.bool.value(j)),
                }
            });
        }
        let n = self.list.len();
        builders
            .into_iter()
            .map(|(mut b, filled)| {
                pad(&mut b, n - filled);
                let a: ArrayRef = match b {
                    B::Str(mut b) => Arc::new(b.finish()),
                    B::Int(mut b) => Arc::new(b.finish()),
                    B::Float(mut b) => Arc::new(b.finish()),
                    B::Bool(mut b) => Arc::new(b.finish()),
                };
                a
            })
            .collect()
    }
}

/// Per key, rows with a value of each type ([`PropType::index`]).
pub(crate) type BTreeMapCounts<'a> = std::collections::BTreeMap<&'a str, [u64; 4]>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_keys_always_then_frequent_ones_up_to_the_cap() {
        let mut counts: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
        let names: Vec<String> = (0..300).map(|i| format!("k{i:03}")).collect();
        for (i, n) in names.iter().enumerate() {
            // k000..k199 in 50 % of rows, the rest in 5 %.
            counts.insert(n, [if i < 200 { 50 } else { 5 }, 0, 0, 0]);
        }
        counts.insert("mixed", [40, 30, 0, 0]);
        let p = Promote::keys(["ghost".to_owned(), "k250".to_owned()]);
        let chosen = p.choose(&counts, 100);
        assert_eq!(chosen[0].key, "ghost");
        assert!(chosen[0].columns.is_empty(), "a view's key with no value");
        assert_eq!(chosen[1].key, "k250", "a view's key below the threshold");
        let width: usize = chosen.iter().map(|k| k.columns.len()).sum();
        assert_eq!(width, MAX_COLUMNS, "the cap");
        let mixed = chosen.iter().find(|k| k.key == "mixed").unwrap();
        assert_eq!(
            mixed.columns,
            vec![
                (PropType::Str, "properties.mixed:str".to_owned()),
                (PropType::Int, "properties.mixed:int".to_owned())
            ]
        );
        assert!(
            chosen.iter().all(|k| k.key != "k299"),
            "rare keys stay in props"
        );
    }
}
