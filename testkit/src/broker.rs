//! A private Tansu broker (Kafka protocol) on a free port; optionally
//! reached over TLS.
//!
//! Tansu 0.6 has no TLS listener of its own (its `--cert` flag is accepted
//! but the Kafka port stays plain), so a TLS broker here is Tansu behind
//! `socat`'s OpenSSL listener, with Tansu advertising the TLS port: every
//! byte a client exchanges with "the broker" then goes over TLS, as with a
//! TLS listener on Apache Kafka.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{cache_dir, free_port, Error, Server};
use crate::tls::TlsFiles;

/// How the broker keeps its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Fast; lost when the broker stops.
    Memory,
    /// SQLite file in the broker's folder; survives a broker restart.
    Sqlite,
}

/// A running private broker. Dropping it stops the server.
#[derive(Debug)]
pub struct Broker {
    port: u16,
    storage: Storage,
    dir: TempDir,
    /// The TLS port clients use and its proxy, for a TLS broker.
    tls: Option<(u16, Server)>,
    server: Server,
}

impl Broker {
    /// A broker with memory storage.
    pub fn start() -> Result<Broker, Error> {
        Self::start_with(Storage::Memory)
    }

    pub fn start_with(storage: Storage) -> Result<Broker, Error> {
        let dir = tempfile::Builder::new().prefix("tally-broker-").tempdir()?;
        let port = free_port()?;
        let server = spawn(&dir, port, port, storage)?;
        Ok(Broker {
            port,
            storage,
            dir,
            tls: None,
            server,
        })
    }

    /// A broker (memory storage) that clients reach over TLS with the
    /// server certificate of `tls`: [`Broker::bootstrap`] is the TLS port.
    pub fn start_tls(tls: &TlsFiles) -> Result<Broker, Error> {
        let dir = tempfile::Builder::new().prefix("tally-broker-").tempdir()?;
        let port = free_port()?;
        let tls_port = free_port()?;
        let server = spawn(&dir, port, tls_port, Storage::Memory)?;
        let mut cmd = Command::new("socat");
        cmd.arg(format!(
            "OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            tls.cert.display(),
            tls.key.display()
        ))
        .arg(format!("TCP:127.0.0.1:{port}"));
        let log = dir.path().join(format!("socat-{tls_port}.log"));
        let mut proxy = Server::spawn("socat", cmd, log)?;
        proxy.wait_ready("socat", tls_port, Duration::from_secs(10))?;
        Ok(Broker {
            port,
            storage: Storage::Memory,
            dir,
            tls: Some((tls_port, proxy)),
            server,
        })
    }

    /// `host:port` for `bootstrap.servers` (the TLS port of a TLS broker).
    pub fn bootstrap(&self) -> String {
        match &self.tls {
            Some((tls_port, _)) => format!("127.0.0.1:{tls_port}"),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    /// The broker's log file.
    pub fn log_path(&self) -> &std::path::Path {
        &self.server.log
    }

    /// Kill the server (until [`Broker::restart`]): the broker is down.
    pub fn stop(&mut self) {
        self.server.kill();
    }

    /// Stop and start again on the same port (records survive with [`Storage::Sqlite`]).
    pub fn restart(&mut self) -> Result<(), Error> {
        self.server.kill();
        let advertised = self.tls.as_ref().map_or(self.port, |(p, _)| *p);
        self.server = spawn(&self.dir, self.port, advertised, self.storage)?;
        Ok(())
    }
}

/// The Tansu binary: `TALLY_TANSU`, else where `infra/up` installs it, else `PATH`.
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TALLY_TANSU") {
        return PathBuf::from(p);
    }
    let installed = cache_dir().join("tansu/bin/tansu");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("tansu")
    }
}

/// Tansu on `port`, telling clients to connect to `advertised`.
fn spawn(dir: &TempDir, port: u16, advertised: u16, storage: Storage) -> Result<Server, Error> {
    let engine = match storage {
        Storage::Memory => "memory://tansu/".to_string(),
        // Tansu resolves the path against its working directory.
        Storage::Sqlite => "sqlite://tansu.db".to_string(),
    };
    let mut cmd = Command::new(tansu_bin());
    cmd.arg("broker")
        .arg("--kafka-listener-url")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--kafka-advertised-listener-url")
        .arg(format!("tcp://127.0.0.1:{advertised}"))
        .arg("--storage-engine")
        .arg(engine)
        .current_dir(dir.path())
        .env(
            "RUST_LOG",
            std::env::var("TALLY_TANSU_LOG").unwrap_or_else(|_| "warn".into()),
        );
    let log: PathBuf = dir.path().join(format!("tansu-{port}.log"));
    let mut server = Server::spawn("tansu", cmd, log)?;
    server.wait_ready("tansu", port, Duration::from_secs(30))?;
    Ok(server)
}
