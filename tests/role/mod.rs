//! A `tally` role as a child process of a test: started with a config and a
//! log file, stopped with SIGTERM (which must exit cleanly) or SIGKILL (which
//! must lose nothing); and one `tally batch run` to completion. Used by the
//! crash and end-to-end tests.

// Shared by several test binaries, each using a part: `pub` is the
// module's surface to them, not the crate's.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Role {
    name: String,
    child: Child,
}

impl Role {
    /// `tally <args…> --config <config>`, stderr appended to `log`.
    pub fn start(args: &[&str], config: &Path, log: &Path, env: &[(&str, &str)]) -> Role {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the role's log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally"));
        cmd.args(args)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start tally");
        Role {
            name: args.join(" "),
            child,
        }
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and the process must exit 0 within a minute.
    pub fn terminate(mut self) {
        // A SIGTERM sent before the process has installed its handler
        // (it may just have been restarted) would kill it outright.
        self.wait_for_term_handler();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for tally") {
                assert!(status.success(), "tally {} exited with {status}", self.name);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tally {} did not stop within 60 s of SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait (up to 30 s) until the process catches SIGTERM: bit 15 of the
    /// `SigCgt` mask in `/proc/<pid>/status`.
    fn wait_for_term_handler(&mut self) {
        let status = format!("/proc/{}/status", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let caught = std::fs::read_to_string(&status)
                .ok()
                .and_then(|text| {
                    let mask = text.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
                    u64::from_str_radix(mask.trim(), 16).ok()
                })
                .is_some_and(|mask| mask & (1 << (15 - 1)) != 0);
            if caught {
                return;
            }
            self.assert_running();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics if the process has exited (a role must not die on its own).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait for tally") {
            panic!("tally {} exited on its own with {status}", self.name);
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tally batch run --config <config>`, to completion (a run that finds the
/// lock held is a refusal, not a failure).
pub fn batch_run(config: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["batch", "run", "--config"])
        .arg(config)
        .output()
        .expect("run tally batch run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("holds the lock"),
        "tally batch run failed: {stderr}"
    );
}
