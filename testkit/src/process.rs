//! A child server process that dies with its owner, and free-port discovery.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {what} ({cmd}): {source}; run infra/up to install it")]
    Spawn {
        what: &'static str,
        cmd: String,
        source: std::io::Error,
    },
    #[error("{what} did not accept connections on port {port} within {secs}s; its log: {log}")]
    NotReady {
        what: &'static str,
        port: u16,
        secs: u64,
        log: String,
    },
    #[error("redis cluster: {0}")]
    Cluster(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A port that was free a moment ago (bound and released).
pub fn free_port() -> Result<u16, Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The folder `infra/up` installs tools into.
pub(crate) fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("TALLY_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    PathBuf::from(home).join(".cache/tally")
}

/// A running server; killed (and reaped) on drop.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Server {
    pub(crate) fn spawn(
        what: &'static str,
        mut cmd: Command,
        log: PathBuf,
    ) -> Result<Server, Error> {
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| Error::Spawn {
                what,
                cmd: format!("{cmd:?}"),
                source,
            })?;
        Ok(Server { child, log })
    }

    /// Wait until `port` accepts a TCP connection.
    pub(crate) fn wait_ready(
        &mut self,
        what: &'static str,
        port: u16,
        timeout: Duration,
    ) -> Result<(), Error> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(Error::NotReady {
            what,
            port,
            secs: timeout.as_secs(),
            log: std::fs::read_to_string(&self.log).unwrap_or_default(),
        })
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
