//! The part every server shares: finding its program, spawning it with its
//! output in a log file, waiting (with a deadline) until it answers, and
//! killing it.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TestkitError;

/// How many attempts a start makes when it loses a port race.
pub(crate) const START_ATTEMPTS: usize = 3;
const TAIL_LINES: usize = 25;
const TAIL_BYTES: u64 = 8 * 1024;
/// After SIGKILL the kernel tears a process down promptly; this only bounds
/// the wait for a process stuck in uninterruptible I/O.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run and how to tell that it is up.
pub(crate) struct Spec {
    pub server: &'static str,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    /// Environment variables with these prefixes are removed, because the
    /// servers read them as configuration (`ETCD_*`, `BAO_*`, `VAULT_*`) and
    /// a developer's shell must not change what a test starts.
    pub scrub_env: &'static [&'static str],
    /// Environment variables set for the server (after the scrub).
    pub env: Vec<(OsString, OsString)>,
    /// The start-up deadline, when the server needs its own; otherwise
    /// [`start_timeout`].
    pub start_timeout: Option<Duration>,
    pub log: PathBuf,
    /// `Ok(())` when ready, `Err(why not yet)` otherwise.
    pub ready: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
}

/// A running (or stopped) server process; it is killed on drop.
pub(crate) struct Proc {
    spec: Spec,
    child: Option<Child>,
    started_in: Duration,
}

impl Proc {
    /// Spawns the server and waits until it is ready.
    pub fn start(spec: Spec) -> Result<Proc, TestkitError> {
        let mut p = Proc {
            spec,
            child: None,
            started_in: Duration::ZERO,
        };
        p.launch()?;
        Ok(p)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How long the latest start took until the server answered.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }

    /// True while the process exists and has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and reap; a no-op when already stopped. A kill, not a polite
    /// shutdown, because that is what outage tests want to simulate and all
    /// three servers recover their data from a crash.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.kill();
        let deadline = Instant::now() + REAP_TIMEOUT;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        eprintln!(
            "ferry-testkit: {} (pid {}) not reaped {REAP_TIMEOUT:?} after SIGKILL",
            self.spec.server,
            child.id()
        );
    }

    /// Waits up to `limit` for the process to exit on its own (after a
    /// shutdown request); true when it did (it is reaped, `pid` is `None`).
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.exit_status().is_some() || self.child.is_none() {
                self.child = None;
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again after it exited or was stopped (same
    /// arguments); a no-op while it runs.
    pub fn relaunch(&mut self) -> Result<(), TestkitError> {
        if self.is_running() {
            return Ok(());
        }
        self.child = None;
        self.launch()
    }

    /// Stops (if running) and starts again with the same arguments, hence
    /// the same ports and data directory.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop();
        self.launch()
    }

    fn launch(&mut self) -> Result<(), TestkitError> {
        let spec = &self.spec;
        let io_err = |context: String| {
            move |source| TestkitError::Io {
                server: spec.server,
                context,
                source,
            }
        };
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(io_err(format!("open log {}", spec.log.display())))?;
        // Restarts append to the same log; remember where this run begins so
        // an error shows this run's lines, not the previous run's.
        let offset = log.seek(SeekFrom::End(0)).unwrap_or(0);
        let _ = writeln!(
            log,
            "=== ferry-testkit: {} {}",
            spec.program.display(),
            spec.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let log_err = log
            .try_clone()
            .map_err(io_err("duplicate log handle".into()))?;

        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if spec.scrub_env.iter().any(|p| k.starts_with(p)) {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        let began = Instant::now();
        let child = cmd
            .spawn()
            .map_err(io_err(format!("spawn {}", spec.program.display())))?;
        self.child = Some(child);

        let timeout = self.spec.start_timeout.unwrap_or_else(start_timeout);
        let deadline = began + timeout;
        let mut delay = Duration::from_millis(10);
        let mut last;
        loop {
            // Check for an exit before every probe: a server that lost its
            // port to another process would otherwise be "ready" by proxy.
            if let Some(status) = self.exit_status() {
                self.child = None;
                return Err(TestkitError::Exited {
                    server: self.spec.server,
                    status,
                    log: self.spec.log.clone(),
                    tail: tail(&self.spec.log, offset),
                });
            }
            match (self.spec.ready)() {
                Ok(()) if self.exit_status().is_none() => {
                    self.started_in = began.elapsed();
                    return Ok(());
                }
                // It answered but has just died: the next turn reports the exit.
                Ok(()) => last = String::from("answered, then exited"),
                Err(why) => last = why,
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(TestkitError::NotReady {
                    server: self.spec.server,
                    waited: timeout,
                    last,
                    log: self.spec.log.clone(),
                    tail: tail(&self.spec.log, offset),
                });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    fn exit_status(&mut self) -> Option<String> {
        match self.child.as_mut()?.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("wait failed: {e}")),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn start_timeout() -> Duration {
    std::env::var("FERRY_TESTKIT_START_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs)
}

/// The last lines the current run wrote to its log.
fn tail(path: &Path, offset: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::from("(log unreadable)");
    };
    let end = f.seek(SeekFrom::End(0)).unwrap_or(0);
    let from = offset.max(end.saturating_sub(TAIL_BYTES));
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_end(&mut buf).is_err() {
        return String::from("(log unreadable)");
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// Finds a server's program: `$env_var`, then (for tools installed into the
/// venv) `tools_dir()/bin/<name>`, then `PATH`.
pub(crate) fn find_program(
    server: &'static str,
    name: &str,
    env_var: &str,
    in_tools_dir: bool,
) -> Result<PathBuf, TestkitError> {
    if let Some(v) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(TestkitError::Missing {
                server,
                hint: format!("{env_var}={} is not an executable file", p.display()),
            })
        };
    }
    let mut candidates = Vec::new();
    if in_tools_dir {
        candidates.push(crate::tools_dir().join("bin").join(name));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    candidates
        .into_iter()
        .find(|p| is_executable(p))
        .ok_or_else(|| TestkitError::Missing {
            server,
            hint: format!(
                "no `{name}` in {}PATH; run deploy/local/install.sh or set {env_var}",
                if in_tools_dir {
                    format!("{}/bin or ", crate::tools_dir().display())
                } else {
                    String::new()
                }
            ),
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    // metadata() follows symlinks, so a dangling tools-dir link counts as
    // missing rather than as a program that fails to spawn.
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A new temporary directory for one server's data and log.
pub(crate) fn temp_dir(server: &'static str) -> Result<tempfile::TempDir, TestkitError> {
    tempfile::Builder::new()
        .prefix(&format!("ferry-{server}-"))
        .tempdir()
        .map_err(|source| TestkitError::Io {
            server,
            context: "create temp dir".into(),
            source,
        })
}

/// The accessors every server handle delegates to its [`Proc`]; `stop` and
/// `restart` take their own docs, as what survives a restart differs.
macro_rules! delegate_to_proc {
    (stop: $stop_doc:literal, restart: $restart_doc:literal) => {
        /// The server's own log (stdout and stderr).
        pub fn log_path(&self) -> &std::path::Path {
            self.proc.log_path()
        }

        pub fn pid(&self) -> Option<u32> {
            self.proc.pid()
        }

        pub fn is_running(&mut self) -> bool {
            self.proc.is_running()
        }

        /// How long the last start took until the server answered.
        pub fn started_in(&self) -> std::time::Duration {
            self.proc.started_in()
        }

        #[doc = $stop_doc]
        pub fn stop(&mut self) {
            self.proc.stop();
        }

        #[doc = $restart_doc]
        pub fn restart(&mut self) -> Result<(), $crate::TestkitError> {
            self.proc.restart()
        }
    };
}
pub(crate) use delegate_to_proc;
