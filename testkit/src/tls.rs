//! Certificates for tests of the TLS paths: a private certificate authority
//! and a server certificate it signs for `localhost` and `127.0.0.1`, made
//! by the `openssl` command in a temporary folder.
//!
//! A real chain (not one self-signed certificate) because rustls, as it
//! should, refuses a CA certificate presented as a server's.

use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

use crate::process::Error;

/// Install the process's rustls crypto provider (aws-lc-rs), as the `tally`
/// binary does at start: needed before the first `rediss://` connection of
/// a test that runs the layers in-process. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// PEM files; removed when dropped.
#[derive(Debug)]
pub struct TlsFiles {
    _dir: TempDir,
    /// The authority clients trust.
    pub ca: PathBuf,
    /// The server's certificate and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn generate() -> Result<TlsFiles, Error> {
        let dir = tempfile::Builder::new().prefix("tally-tls-").tempdir()?;
        let p = |name: &str| dir.path().join(name);
        std::fs::write(
            p("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &dir,
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=tally-test-ca",
                ],
            ]
            .concat(),
        )?;
        openssl(
            &dir,
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
        )?;
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        )?;
        Ok(TlsFiles {
            ca: p("ca.pem"),
            cert: p("server.pem"),
            key: p("server.key"),
            _dir: dir,
        })
    }
}

fn openssl(dir: &TempDir, args: &[&str]) -> Result<(), Error> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir.path())
        .output()
        .map_err(|source| Error::Spawn {
            what: "openssl",
            cmd: format!("openssl {}", args.join(" ")),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Io(std::io::Error::other(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))))
    }
}
