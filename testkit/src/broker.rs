//! A private Tansu broker (Kafka protocol, records in memory) on a free
//! port; optionally reached over TLS, or through a proxy a test can cut.
//!
//! Tansu 0.6 has no TLS listener of its own (its `--cert` flag is accepted
//! but the Kafka port stays plain), so a TLS broker here is Tansu behind
//! `socat`'s OpenSSL listener, with Tansu advertising the TLS port: every
//! byte a client exchanges with "the broker" then goes over TLS, as with a
//! TLS listener on Apache Kafka.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{cache_dir, free_port, Error, Server};
use crate::tls::TlsFiles;

/// A running private broker. Dropping it stops the server.
#[derive(Debug)]
pub struct Broker {
    port: u16,
    dir: TempDir,
    /// The port clients use and the `socat` in front of Tansu, for a TLS
    /// broker or one that can be cut off.
    front: Option<Front>,
    server: Server,
}

/// `socat` between the clients and Tansu.
#[derive(Debug)]
struct Front {
    port: u16,
    /// The server certificate and key, for a TLS listener.
    tls: Option<(PathBuf, PathBuf)>,
    /// `None` while cut off.
    proxy: Option<Server>,
}

impl Front {
    fn new(tls: Option<(PathBuf, PathBuf)>) -> Result<Front, Error> {
        Ok(Front {
            port: free_port()?,
            tls,
            proxy: None,
        })
    }

    fn start(&mut self, dir: &TempDir, to: u16) -> Result<(), Error> {
        let listen = match &self.tls {
            Some((cert, key)) => format!(
                "OPENSSL-LISTEN:{},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                self.port,
                cert.display(),
                key.display()
            ),
            None => format!("TCP-LISTEN:{},bind=127.0.0.1,reuseaddr,fork", self.port),
        };
        let mut cmd = Command::new("socat");
        cmd.arg(listen).arg(format!("TCP:127.0.0.1:{to}"));
        // A group of its own: each connection is a forked child, which
        // killing the listener alone would leave open (see `Front::stop`).
        cmd.process_group(0);
        let log = dir.path().join(format!("socat-{}.log", self.port));
        let mut proxy = Server::spawn("socat", cmd, log)?;
        proxy.wait_ready("socat", self.port, Duration::from_secs(10))?;
        self.proxy = Some(proxy);
        Ok(())
    }

    /// Stop the proxy and every connection it forwards.
    fn stop(&mut self) {
        if let Some(mut proxy) = self.proxy.take() {
            // The group's id is the listener's pid (`process_group(0)`).
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg("--")
                .arg(format!("-{}", proxy.child.id()))
                .status();
            proxy.kill();
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Broker {
    /// A broker on a free port.
    pub fn start() -> Result<Broker, Error> {
        Self::launch(None)
    }

    /// A broker that clients reach over TLS with the
    /// server certificate of `tls`: [`Broker::bootstrap`] is the TLS port.
    pub fn start_tls(tls: &TlsFiles) -> Result<Broker, Error> {
        let front = Front::new(Some((tls.cert.clone(), tls.key.clone())))?;
        Self::launch(Some(front))
    }

    /// A broker behind a TCP proxy, so that a test can cut
    /// the clients off and let them back ([`Broker::cut_off`],
    /// [`Broker::reconnect`]) while the broker keeps its records: to a
    /// client, a broker that is down and comes back. (Tansu keeps records in
    /// memory here: its SQLite storage, which would survive a restart, drops
    /// connections under a steady fetch load.)
    pub fn start_behind_proxy() -> Result<Broker, Error> {
        Self::launch(Some(Front::new(None)?))
    }

    fn launch(mut front: Option<Front>) -> Result<Broker, Error> {
        let dir = tempfile::Builder::new().prefix("tally-broker-").tempdir()?;
        let port = free_port()?;
        // Tansu tells clients the port they reach it on.
        let advertised = front.as_ref().map_or(port, |f| f.port);
        let server = spawn(&dir, port, advertised)?;
        if let Some(f) = front.as_mut() {
            f.start(&dir, port)?;
        }
        Ok(Broker {
            port,
            dir,
            front,
            server,
        })
    }

    /// `host:port` for `bootstrap.servers` (the proxy's port when there is one).
    pub fn bootstrap(&self) -> String {
        let port = self.front.as_ref().map_or(self.port, |f| f.port);
        format!("127.0.0.1:{port}")
    }

    /// The broker's log file.
    pub fn log_path(&self) -> &std::path::Path {
        &self.server.log
    }

    /// Stop and start again on the same port, empty: a broker whose storage
    /// was wiped.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.server.kill();
        let advertised = self.front.as_ref().map_or(self.port, |f| f.port);
        self.server = spawn(&self.dir, self.port, advertised)?;
        Ok(())
    }

    /// Cut every client off (a broker from [`Broker::start_behind_proxy`]):
    /// connections drop and new ones are refused until [`Broker::reconnect`].
    pub fn cut_off(&mut self) {
        if let Some(f) = self.front.as_mut() {
            f.stop();
        }
    }

    /// Let clients reach the broker again after [`Broker::cut_off`].
    pub fn reconnect(&mut self) -> Result<(), Error> {
        match self.front.as_mut() {
            Some(f) => f.start(&self.dir, self.port),
            None => Ok(()),
        }
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
fn spawn(dir: &TempDir, port: u16, advertised: u16) -> Result<Server, Error> {
    let mut cmd = Command::new(tansu_bin());
    cmd.arg("broker")
        .arg("--kafka-listener-url")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--kafka-advertised-listener-url")
        .arg(format!("tcp://127.0.0.1:{advertised}"))
        .arg("--storage-engine")
        .arg("memory://tansu/")
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
