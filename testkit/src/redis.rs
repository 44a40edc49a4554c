//! A private `redis-server`, without persistence, on a free port.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{free_port, Error, Server};

/// A running private Redis. Dropping it stops the server.
#[derive(Debug)]
pub struct Redis {
    port: u16,
    dir: TempDir,
    /// Extra `redis-server` arguments, kept for restarts.
    args: Vec<String>,
    server: Server,
}

impl Redis {
    pub fn start() -> Result<Redis, Error> {
        Redis::start_with(&[])
    }

    /// A Redis started with extra arguments, e.g.
    /// `["--maxmemory-policy", "allkeys-lru"]`.
    pub fn start_with(args: &[&str]) -> Result<Redis, Error> {
        let dir = tempfile::Builder::new().prefix("tally-redis-").tempdir()?;
        let port = free_port()?;
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let server = spawn(&dir, port, &args)?;
        Ok(Redis {
            port,
            dir,
            args,
            server,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kill the server and start an empty one on the same port: what a Redis
    /// that lost its memory looks like to clients.
    pub fn restart_empty(&mut self) -> Result<(), Error> {
        self.server.kill();
        self.server = spawn(&self.dir, self.port, &self.args)?;
        Ok(())
    }
}

fn spawn(dir: &TempDir, port: u16, args: &[String]) -> Result<Server, Error> {
    let bin = std::env::var("TALLY_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--protected-mode", "no"])
        .arg("--dir")
        .arg(dir.path())
        .args(args);
    let log: PathBuf = dir.path().join(format!("redis-{port}.log"));
    let mut server = Server::spawn("redis-server", cmd, log)?;
    server.wait_ready("redis-server", port, Duration::from_secs(20))?;
    Ok(server)
}
