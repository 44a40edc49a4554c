//! `[[lookup]]`: tables in the object store that map a dimension's values
//! to another value (page → section, country → region), applied by the
//! serving layer at query time.
//!
//! A table is a CSV file (with a header row) or a Parquet file under the
//! store's root, read for two of its columns: `key` and `value`. Queries
//! name a lookup after a dimension, `group_by=properties.page@section`.
//! Guarantee: [`LookupConfig::validate`] names the field and the fix.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::view::valid_name;

/// One lookup table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupConfig {
    /// What queries call it (`properties.page@<name>`): 1-64 letters,
    /// digits, `_` or `-`.
    pub name: String,
    /// The table's path in the object store (`store.url`), ending in
    /// `.csv` or `.parquet`, e.g. `lookups/sections.csv`.
    pub path: String,
    /// The column holding the dimension's values.
    pub key: String,
    /// The column holding what they map to.
    pub value: String,
    /// What a value absent from the table maps to; unset, it maps to null
    /// (an absent dimension value stays null either way).
    #[serde(default)]
    pub missing: Option<String>,
}

/// How a table file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupFormat {
    Csv,
    Parquet,
}

impl LookupConfig {
    /// The file's format, from its extension.
    pub fn format(&self) -> Option<LookupFormat> {
        let lower = self.path.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            Some(LookupFormat::Csv)
        } else if lower.ends_with(".parquet") {
            Some(LookupFormat::Parquet)
        } else {
            None
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, problem: String| {
            Err(ConfigError::Invalid {
                field: format!("lookup.{}.{field}", self.name),
                problem,
            })
        };
        if !valid_name(&self.name) {
            return Err(ConfigError::Invalid {
                field: "lookup.name".into(),
                problem: format!(
                    "`{}` is not a valid lookup name: use 1-64 letters, digits, `_` or `-`",
                    self.name
                ),
            });
        }
        let p = self.path.trim();
        if p.is_empty() || p.starts_with('/') || p.contains("..") || p.contains("://") {
            return invalid(
                "path",
                format!(
                    "`{}` must be a path inside the object store (store.url), e.g. \"lookups/{}.csv\"",
                    self.path, self.name
                ),
            );
        }
        if self.format().is_none() {
            return invalid(
                "path",
                format!(
                    "`{}` must end in .csv (with a header row) or .parquet",
                    self.path
                ),
            );
        }
        if self.key.trim().is_empty() || self.value.trim().is_empty() {
            return invalid(
                "key",
                "name the table's key and value columns, e.g. key = \"page\", value = \"section\""
                    .into(),
            );
        }
        if self.key == self.value {
            return invalid(
                "value",
                format!(
                    "is the key column `{}` too: name the column holding the mapped values",
                    self.key
                ),
            );
        }
        Ok(())
    }
}

/// Check every lookup, and that no two share a name.
pub(super) fn validate_all(lookups: &[LookupConfig]) -> Result<(), ConfigError> {
    for (i, l) in lookups.iter().enumerate() {
        l.validate()?;
        if lookups[..i].iter().any(|o| o.name == l.name) {
            return Err(ConfigError::Invalid {
                field: format!("lookup.{}.name", l.name),
                problem: "two lookups have this name: names must be unique".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn with(lookup: &str) -> Result<Config, String> {
        Config::from_toml(&format!(
            "[[lookup]]\n{lookup}\n[[view]]\nname = \"v\"\ngranularity = \"1m\"\nmeasures = [{{ name = \"n\", agg = \"count\" }}]\n"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn good_lookups_load_and_bad_ones_name_the_field() {
        let cfg = with("name = \"section\"\npath = \"lookups/s.csv\"\nkey = \"page\"\nvalue = \"section\"\nmissing = \"other\"").unwrap();
        assert_eq!(cfg.lookups[0].missing.as_deref(), Some("other"));
        for (bad, field) in [
            (
                "name = \"a b\"\npath = \"x.csv\"\nkey = \"k\"\nvalue = \"v\"",
                "lookup.name",
            ),
            (
                "name = \"s\"\npath = \"x.json\"\nkey = \"k\"\nvalue = \"v\"",
                "lookup.s.path",
            ),
            (
                "name = \"s\"\npath = \"/etc/x.csv\"\nkey = \"k\"\nvalue = \"v\"",
                "lookup.s.path",
            ),
            (
                "name = \"s\"\npath = \"x.csv\"\nkey = \"k\"\nvalue = \"k\"",
                "lookup.s.value",
            ),
            (
                "name = \"s\"\npath = \"x.csv\"\nkey = \"\"\nvalue = \"v\"",
                "lookup.s.key",
            ),
            ("name = \"s\"\npath = \"x.csv\"\nkey = \"k\"", "value"),
            (
                "name = \"s\"\npath = \"x.csv\"\nkey = \"k\"\nvalue = \"v\"\ncolumn = 1",
                "column",
            ),
        ] {
            let e = with(bad).unwrap_err();
            assert!(e.contains(field), "{bad}: {e}");
        }
        let twice = "name = \"s\"\npath = \"x.csv\"\nkey = \"k\"\nvalue = \"v\"\n[[lookup]]\nname = \"s\"\npath = \"y.csv\"\nkey = \"k\"\nvalue = \"v\"";
        assert!(with(twice).unwrap_err().contains("unique"));
    }
}
