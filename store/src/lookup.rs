//! A lookup table's file: CSV (a header row, then rows, RFC 4180 quoting,
//! read by the `csv` crate) or Parquet, two columns picked by name. The
//! serving layer loads tables through this reader and applies them at query
//! time; the file is the user's, this is the one place that reads it.
//!
//! Guarantees: a file without the key or value column, a key given twice,
//! or a file over [`MAX_TABLE_BYTES`] is refused with an error naming the
//! table, the column or row, and the fix; a null or empty key is skipped.
//! Values of any type read as text (Parquet numbers through Arrow's cast).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, StringArray};
use arrow_schema::DataType;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use tally_core::config::{LookupConfig, LookupFormat};

/// The largest table file read: a table is held in memory whole.
pub const MAX_TABLE_BYTES: u64 = 64 << 20;

/// Why a table was not loaded (the previous version, if any, stays).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("lookup `{table}`: cannot read `{path}` from the object store: {message}")]
    Store {
        table: String,
        path: String,
        message: String,
    },
    #[error("lookup `{table}`: {problem}")]
    Content { table: String, problem: String },
}

/// A loaded table: key → value.
#[derive(Debug, Clone)]
pub struct Table {
    pub map: HashMap<Arc<str>, Arc<str>>,
    /// What a key absent from the table maps to.
    pub missing: Option<Arc<str>>,
    /// The content's hash (16 hex digits): the same bytes give the same
    /// version on every server.
    pub version: String,
}

impl Table {
    /// What `key` maps to.
    pub fn get(&self, key: &str) -> Option<Arc<str>> {
        self.map.get(key).cloned().or_else(|| self.missing.clone())
    }

    /// Read `bytes`, the file of `cfg`.
    pub fn parse(cfg: &LookupConfig, bytes: Bytes) -> Result<Table, TableError> {
        let problem = |problem: String| TableError::Content {
            table: cfg.name.clone(),
            problem,
        };
        let version = format!("{:016x}", fnv1a(&bytes));
        let pairs = match cfg.format() {
            Some(LookupFormat::Csv) => csv_pairs(cfg, &bytes).map_err(problem)?,
            Some(LookupFormat::Parquet) => parquet_pairs(cfg, bytes).map_err(problem)?,
            None => {
                return Err(problem(format!(
                    "`{}` is neither .csv nor .parquet",
                    cfg.path
                )))
            }
        };
        let mut map: HashMap<Arc<str>, Arc<str>> = HashMap::with_capacity(pairs.len());
        for (row, (k, v)) in pairs.into_iter().enumerate() {
            if k.is_empty() {
                continue;
            }
            if map.insert(Arc::from(k.as_str()), Arc::from(v)).is_some() {
                return Err(problem(format!(
                    "key `{k}` (column `{}`) is given twice, again in data row {}: give each key once",
                    cfg.key,
                    row + 1
                )));
            }
        }
        Ok(Table {
            map,
            missing: cfg.missing.as_deref().map(Arc::from),
            version,
        })
    }
}

/// FNV-1a, 64 bits: a stable content hash without another dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn column_of(header: &[String], name: &str, cfg: &LookupConfig) -> Result<usize, String> {
    header.iter().position(|h| h.trim() == name).ok_or_else(|| {
        format!(
            "`{}` has no column `{name}` (its columns are {header:?}): fix lookup.{}.key / value or the file",
            cfg.path, cfg.name
        )
    })
}

/// The (key, value) rows of a CSV file.
fn csv_pairs(cfg: &LookupConfig, bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes);
    let bad = |e: csv::Error| {
        let line = e.position().map(|p| p.line()).unwrap_or(0);
        match e.kind() {
            csv::ErrorKind::Utf8 { .. } => {
                format!(
                    "`{}` is not UTF-8 text (line {line}): save it as UTF-8",
                    cfg.path
                )
            }
            _ => format!("`{}` is not readable CSV at line {line}: {e}", cfg.path),
        }
    };
    let header: Vec<String> = reader
        .headers()
        .map_err(bad)?
        .iter()
        .map(str::to_owned)
        .collect();
    if header.is_empty() || header == [""] {
        return Err(format!("`{}` is empty: it needs a header row", cfg.path));
    }
    let (k, v) = (
        column_of(&header, &cfg.key, cfg)?,
        column_of(&header, &cfg.value, cfg)?,
    );
    let mut out = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(bad)?;
        if row.len() == 1 && row[0].is_empty() {
            continue;
        }
        let cell = |c: usize| {
            row.get(c).map(str::to_owned).ok_or_else(|| {
                format!(
                    "data row {} of `{}` has {} fields, fewer than the header's {}",
                    i + 1,
                    cfg.path,
                    row.len(),
                    header.len()
                )
            })
        };
        out.push((cell(k)?, cell(v)?));
    }
    Ok(out)
}

/// The (key, value) rows of a Parquet file.
fn parquet_pairs(cfg: &LookupConfig, bytes: Bytes) -> Result<Vec<(String, String)>, String> {
    let bad =
        |e: &dyn std::fmt::Display| format!("`{}` is not a readable Parquet file: {e}", cfg.path);
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| bad(&e))?;
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let (k, v) = (
        column_of(&names, &cfg.key, cfg)?,
        column_of(&names, &cfg.value, cfg)?,
    );
    let mask = ProjectionMask::roots(builder.parquet_schema(), [k, v]);
    let reader = builder.with_projection(mask).build().map_err(|e| bad(&e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(&e))?;
        let text = |name: &str| -> Result<StringArray, String> {
            let col = batch
                .column_by_name(name)
                .ok_or_else(|| format!("`{}` has no column `{name}`", cfg.path))?;
            let cast = arrow_cast::cast::cast(col.as_ref(), &DataType::Utf8).map_err(|e| {
                format!(
                    "column `{name}` of `{}` has type {} and cannot be read as text: {e}",
                    cfg.path,
                    col.data_type()
                )
            })?;
            cast.as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| format!("column `{name}` of `{}` cannot be read as text", cfg.path))
        };
        let (keys, values) = (text(&cfg.key)?, text(&cfg.value)?);
        for i in 0..keys.len() {
            if keys.is_null(i) {
                continue;
            }
            let value = if values.is_null(i) {
                String::new()
            } else {
                values.value(i).to_owned()
            };
            out.push((keys.value(i).to_owned(), value));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: &str) -> LookupConfig {
        LookupConfig {
            name: "section".into(),
            path: path.into(),
            key: "page".into(),
            value: "section".into(),
            missing: Some("other".into()),
        }
    }

    #[test]
    fn csv_tables_read_quotes_and_name_what_is_wrong() {
        let text =
            "id,page,section\r\n1,/home,top\n2,\"/a,\"\"b\"\"\",\"news\nlong\"\n3,,skipped\n";
        let t = Table::parse(&cfg("s.csv"), Bytes::from(text)).unwrap();
        assert_eq!(t.get("/home").as_deref(), Some("top"));
        assert_eq!(t.get("/a,\"b\"").as_deref(), Some("news\nlong"));
        assert_eq!(t.get("/nope").as_deref(), Some("other"));
        assert_eq!(t.map.len(), 2);
        let e = Table::parse(&cfg("s.csv"), Bytes::from("page,sec\n/a,b\n")).unwrap_err();
        assert!(e.to_string().contains("no column `section`"), "{e}");
        let e = Table::parse(&cfg("s.csv"), Bytes::from("page,section\n/a,b\n/a,c\n")).unwrap_err();
        assert!(
            e.to_string().contains("`/a`") && e.to_string().contains("twice"),
            "{e}"
        );
        let e = Table::parse(&cfg("s.csv"), Bytes::from("page,x,section\n/a,b\n")).unwrap_err();
        assert!(e.to_string().contains("fewer than"), "{e}");
        let e =
            Table::parse(&cfg("s.csv"), Bytes::from(&b"page,section\n/a,\xff\n"[..])).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        // The version follows the content.
        let a = Table::parse(&cfg("s.csv"), Bytes::from("page,section\n/a,b\n")).unwrap();
        let b = Table::parse(&cfg("s.csv"), Bytes::from("page,section\n/a,c\n")).unwrap();
        assert_ne!(a.version, b.version);
    }
}
