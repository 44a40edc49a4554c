//! A configuration value that must never be printed: passwords and tokens.
//!
//! `Secret` deserializes from a plain string, and its `Debug` and `Display`
//! print `***`, so a `{:?}` of any config that holds one (a log line, an
//! error, `tally check`) cannot leak it. The value is read only through
//! [`Secret::expose`], which names what the caller is doing.

use serde::{Deserialize, Serialize};

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that hands it to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_prints_as_stars_however_it_is_formatted() {
        let s = Secret::new("hunter2");
        assert_eq!(
            format!("{s:?} {s} {:?}", Some(&s)),
            "\"***\" *** Some(\"***\")"
        );
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn a_secret_reads_from_a_plain_string() {
        #[derive(Deserialize)]
        struct T {
            p: Secret,
        }
        let t: T = toml::from_str("p = \"x y\"").expect("parse");
        assert_eq!(t.p.expose(), "x y");
    }
}
