//! A private Tansu broker (Kafka protocol) on a free port.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{cache_dir, free_port, Error, Server};

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
        let server = spawn(&dir, port, storage)?;
        Ok(Broker {
            port,
            storage,
            dir,
            server,
        })
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log file.
    pub fn log_path(&self) -> &std::path::Path {
        &self.server.log
    }

    /// Stop and start again on the same port (records survive with [`Storage::Sqlite`]).
    pub fn restart(&mut self) -> Result<(), Error> {
        self.server.kill();
        self.server = spawn(&self.dir, self.port, self.storage)?;
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

fn spawn(dir: &TempDir, port: u16, storage: Storage) -> Result<Server, Error> {
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
        .arg(format!("tcp://127.0.0.1:{port}"))
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
