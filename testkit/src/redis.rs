//! A private `redis-server`, without persistence, on a free port; plain, or
//! TLS-only with ACL users (the way a production Redis is reached).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{free_port, Error, Server};
use crate::tls::TlsFiles;

/// A running private Redis. Dropping it stops the server.
#[derive(Debug)]
pub struct Redis {
    port: u16,
    dir: TempDir,
    secure: Option<Secure>,
    /// Extra `redis-server` arguments, kept for restarts.
    args: Vec<String>,
    server: Server,
}

/// A TLS-only server whose `default` user is off: every client logs in.
#[derive(Debug, Clone)]
struct Secure {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    user: String,
    password: String,
    /// ACL rules of `user`, e.g. `~t:* +@all -@dangerous`.
    rules: String,
}

impl Redis {
    pub fn start() -> Result<Redis, Error> {
        Self::launch(None, &[])
    }

    /// A Redis started with extra arguments, e.g.
    /// `["--maxmemory-policy", "allkeys-lru"]`.
    pub fn start_with(args: &[&str]) -> Result<Redis, Error> {
        Self::launch(None, args)
    }

    /// Redis that speaks only TLS (certificates from `tls`) and admits only
    /// `user` with `password`, under the ACL `rules`.
    pub fn start_secure(
        tls: &TlsFiles,
        user: &str,
        password: &str,
        rules: &str,
    ) -> Result<Redis, Error> {
        let secure = Secure {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            ca: tls.ca.clone(),
            user: user.into(),
            password: password.into(),
            rules: rules.into(),
        };
        Self::launch(Some(secure), &[])
    }

    fn launch(secure: Option<Secure>, args: &[&str]) -> Result<Redis, Error> {
        let dir = tempfile::Builder::new().prefix("tally-redis-").tempdir()?;
        let port = free_port()?;
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let server = spawn(&dir, port, secure.as_ref(), &args)?;
        Ok(Redis {
            port,
            dir,
            secure,
            args,
            server,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL clients use: `rediss://user:password@…` for a secure server.
    pub fn url(&self) -> String {
        match &self.secure {
            None => format!("redis://127.0.0.1:{}/", self.port),
            Some(s) => format!(
                "rediss://{}:{}@127.0.0.1:{}/",
                s.user, s.password, self.port
            ),
        }
    }

    /// Kill the server (until [`Redis::restart_empty`]): Redis down.
    pub fn stop(&mut self) {
        self.server.kill();
    }

    /// Kill the server and start an empty one on the same port: what a Redis
    /// that lost its memory looks like to clients.
    pub fn restart_empty(&mut self) -> Result<(), Error> {
        self.server.kill();
        self.server = spawn(&self.dir, self.port, self.secure.as_ref(), &self.args)?;
        Ok(())
    }
}

fn spawn(
    dir: &TempDir,
    port: u16,
    secure: Option<&Secure>,
    args: &[String],
) -> Result<Server, Error> {
    let bin = std::env::var("TALLY_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let mut cmd = Command::new(bin);
    match secure {
        None => {
            cmd.args(["--port", &port.to_string()]);
        }
        Some(s) => {
            // ACL rules hold spaces and `>`: a config file, not arguments.
            let conf = dir.path().join("secure.conf");
            std::fs::write(
                &conf,
                format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-auth-clients no\n\
                     user default off\nuser {} on >{} {}\n",
                    s.cert.display(),
                    s.key.display(),
                    s.ca.display(),
                    s.user,
                    s.password,
                    s.rules
                ),
            )?;
            cmd.arg(&conf);
        }
    }
    cmd.args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        // As the shipped redis.conf has it (the compiled default is 512):
        // quantile sketches past 128 buckets become hash tables, which
        // HINCRBY does not scan (speed/src/hash_encoding.rs).
        .args(["--hash-max-listpack-entries", "128"])
        .args(["--protected-mode", "no"])
        .arg("--dir")
        .arg(dir.path())
        .args(args);
    let log: PathBuf = dir.path().join(format!("redis-{port}.log"));
    let mut server = Server::spawn("redis-server", cmd, log)?;
    server.wait_ready("redis-server", port, Duration::from_secs(20))?;
    Ok(server)
}
