//! `[kafka.security]`: how every Tally client (consumers, the dead-letter
//! producer, the demo's admin client) reaches a broker that wants TLS, SASL,
//! or both.
//!
//! The settings map one to one onto librdkafka's (`security.protocol`,
//! `ssl.*`, `sasl.*`; see `tally_kafka::client_config`). Validation makes the
//! combinations that cannot work an error naming the field: SASL without a
//! mechanism or credentials, a client certificate without its key, a file
//! that does not exist. Passwords are [`Secret`]s, so no `{:?}` of the config
//! prints them.
//!
//! Certificate authorities: `ca_file` if set, else the system's store (which
//! OpenSSL also extends from `SSL_CERT_FILE`).

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    /// The value librdkafka expects.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Ssl => "ssl",
            Protocol::SaslPlaintext => "sasl_plaintext",
            Protocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }
}

/// librdkafka's `sasl.mechanism`: the password-based ones (GSSAPI would need
/// Kerberos in librdkafka's build, OAUTHBEARER a token provider).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSecurity {
    pub protocol: Protocol,
    /// PEM file of the certificate authorities that sign the brokers'
    /// certificates (`ssl.ca.location`); empty: the system's store.
    pub ca_file: Option<String>,
    /// Client certificate and key (PEM) for brokers that authenticate clients
    /// by certificate (`ssl.certificate.location`, `ssl.key.location`).
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// Password of an encrypted `key_file`.
    pub key_password: Option<Secret>,
    pub sasl_mechanism: Option<SaslMechanism>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<Secret>,
}

/// A rule the settings break: the field (under `kafka.security.`) and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub problem: String,
}

impl KafkaSecurity {
    pub fn validate(&self) -> Result<(), Invalid> {
        let invalid = |field, problem: &str| {
            Err(Invalid {
                field,
                problem: problem.to_owned(),
            })
        };
        let p = self.protocol;
        if p.uses_sasl() {
            if self.sasl_mechanism.is_none() {
                return invalid(
                    "sasl_mechanism",
                    "set it for a sasl_* protocol: \"PLAIN\", \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\"",
                );
            }
            if self.sasl_username.as_deref().unwrap_or("").is_empty() {
                return invalid("sasl_username", "set it for a sasl_* protocol");
            }
            if self.sasl_password.as_ref().is_none_or(Secret::is_empty) {
                return invalid(
                    "sasl_password",
                    "set it for a sasl_* protocol (or TALLY_KAFKA__SECURITY__SASL_PASSWORD)",
                );
            }
        } else if self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some()
        {
            return invalid(
                "protocol",
                "SASL settings are given but the protocol has no SASL: use \"sasl_ssl\" (or \"sasl_plaintext\")",
            );
        }
        let tls_files = [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ];
        for (field, file) in tls_files {
            let Some(path) = file else { continue };
            if !p.uses_tls() {
                return invalid(
                    field,
                    "TLS files are given but the protocol has no TLS: use \"ssl\" or \"sasl_ssl\"",
                );
            }
            if !std::path::Path::new(path).is_file() {
                return Err(Invalid {
                    field,
                    problem: format!("`{path}` is not a readable file"),
                });
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return invalid(
                "key_file",
                "a client certificate needs its key: set both cert_file and key_file, or neither",
            );
        }
        if self.key_password.is_some() && self.key_file.is_none() {
            return invalid("key_password", "only meaningful with key_file");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl() -> KafkaSecurity {
        KafkaSecurity {
            protocol: Protocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("tally".into()),
            sasl_password: Some(Secret::new("pw")),
            ..KafkaSecurity::default()
        }
    }

    #[test]
    fn plaintext_with_nothing_else_is_the_default_and_valid() {
        assert_eq!(KafkaSecurity::default().validate(), Ok(()));
    }

    #[test]
    fn sasl_needs_a_mechanism_a_user_and_a_password() {
        assert_eq!(sasl().validate(), Ok(()));
        let no_mech = KafkaSecurity {
            sasl_mechanism: None,
            ..sasl()
        };
        assert_eq!(
            no_mech.validate().map_err(|e| e.field),
            Err("sasl_mechanism")
        );
        let no_pw = KafkaSecurity {
            sasl_password: Some(Secret::new("")),
            ..sasl()
        };
        assert_eq!(no_pw.validate().map_err(|e| e.field), Err("sasl_password"));
    }

    #[test]
    fn credentials_without_sasl_are_a_mistake_not_ignored() {
        let s = KafkaSecurity {
            protocol: Protocol::Ssl,
            ..sasl()
        };
        assert_eq!(s.validate().map_err(|e| e.field), Err("protocol"));
    }

    #[test]
    fn tls_files_must_exist_and_need_a_tls_protocol() {
        let missing = KafkaSecurity {
            protocol: Protocol::Ssl,
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..KafkaSecurity::default()
        };
        let e = missing.validate().expect_err("missing file");
        assert_eq!(e.field, "ca_file");
        assert!(e.problem.contains("/nonexistent/ca.pem"), "{}", e.problem);
        let f = tempfile::NamedTempFile::new().expect("tmp");
        let path = f.path().display().to_string();
        let plain = KafkaSecurity {
            ca_file: Some(path.clone()),
            ..KafkaSecurity::default()
        };
        assert_eq!(plain.validate().map_err(|e| e.field), Err("ca_file"));
        let cert_only = KafkaSecurity {
            protocol: Protocol::Ssl,
            cert_file: Some(path),
            ..KafkaSecurity::default()
        };
        assert_eq!(cert_only.validate().map_err(|e| e.field), Err("key_file"));
    }

    #[test]
    fn the_mechanism_is_written_as_kafka_names_it() {
        let s: KafkaSecurity = toml::from_str(
            "protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"u\"\nsasl_password = \"p\"",
        )
        .expect("parse");
        assert_eq!(s.sasl_mechanism, Some(SaslMechanism::ScramSha256));
        assert!(!format!("{s:?}").contains("\"p\""));
    }
}
