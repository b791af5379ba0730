//! Real servers for Ferry's tests: etcd, OpenBao (the Vault API), a real
//! mongod 7.0 ([`Mongod`], under wine), SecantusDB ([`MongoWire`], a
//! second implementation of the MongoDB wire protocol) and a Kafka-protocol
//! broker ([`Kafka`]: tansu, in memory or on S3 in a moto server), each
//! started as a child process on free loopback ports with its own temporary
//! data directory.
//!
//! Tests talk to the same server programs Ferry talks to in production, never
//! to mocks: a mock agrees with our own reading of a protocol, a real server
//! does not have to.
//!
//! # Invariants
//!
//! - Every server listens on `127.0.0.1` only, and [`http`] refuses any
//!   non-loopback address, so a test can never send traffic off the machine.
//! - Every wait (readiness, process exit, HTTP I/O) is bounded in time; a
//!   start-up timeout reports the last lines of the server's log.
//! - A handle owns its process: dropping it kills the process (SIGKILL) and
//!   reaps it, then removes the data directory. [`Etcd::stop`] and
//!   `restart` keep the ports and the data directory, for outage tests.
//! - Ports come from below the kernel's ephemeral range and are never handed
//!   out twice in one process (see `ports.rs`), so a stopped server can
//!   restart on its ports.
//! - "Ready" means ready for the test's first request: etcd's `/health` is
//!   true, OpenBao is unsealed *and* its `secret/` KV v2 mount serves
//!   requests, mongod is the writable primary of its one-member replica
//!   set, SecantusDB accepts connections, tansu answers a Kafka
//!   `ApiVersions` request (and, for [`Kafka::start_durable`], moto answers
//!   and holds the bucket `tansu`).
//! - A missing program is [`TestkitError::Missing`]; [`require`] turns that
//!   into a skip on a developer's machine and into a failure in CI.
//!
//! Servers die with their handle, including on panic; only a test process
//! that is itself SIGKILLed leaves its servers (and temp dirs) behind.
//!
//! # Example
//!
//! ```no_run
//! use ferry_testkit::{require, Etcd};
//!
//! let Some(mut etcd) = require(Etcd::start()) else { return };
//! let source = etcd.url("app"); // etcd://127.0.0.1:PORT/app
//! etcd.stop(); // an outage ...
//! etcd.restart().unwrap(); // ... and recovery, same port and data
//! # let _ = source;
//!
//! use ferry_testkit::Kafka;
//!
//! // tansu with S3 storage in moto: topics and records survive a restart.
//! let Some(mut kafka) = require(Kafka::start_durable()) else { return };
//! let sink = kafka.url("events"); // kafka://127.0.0.1:PORT/events
//! kafka.restart().unwrap(); // same port, same storage
//! # let _ = sink;
//! ```
//!
//! # Finding the programs
//!
//! `etcd` is looked up through `FERRY_ETCD_BIN`, then `PATH` (Debian's
//! `etcd-server`). `bao`, `secantusd-py`, `tansu` and `moto_server` through
//! `FERRY_BAO_BIN` / `FERRY_SECANTUSD_BIN` / `FERRY_TANSU_BIN` /
//! `FERRY_MOTO_SERVER_BIN`, then `${FERRY_TOOLS_DIR:-/var/tmp/ferry-tools}/bin`,
//! then `PATH`. mongod is `${FERRY_TOOLS_DIR}/bin/mongod.exe` (or
//! `FERRY_MONGOD_EXE`) run by `/usr/lib/wine/wine64` (or `FERRY_WINE_BIN`) in
//! the prefix `${FERRY_TOOLS_DIR}/wineprefix` (or `FERRY_WINEPREFIX`).
//! `deploy/local/install.sh` installs all of them.
//!
//! The start-up deadline is 30 s per server (SecantusDB can need seconds on a
//! cold Python cache), 120 s for mongod; `FERRY_TESTKIT_START_TIMEOUT_SECS`
//! overrides it (for mongod only upwards).

mod base64;
mod etcd;
pub mod http;
mod kafka;
mod mongo;
mod mongod;
mod openbao;
mod ports;
mod process;
mod wire;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

pub use base64::{decode as base64_decode, encode as base64_encode};
pub use etcd::Etcd;
pub use kafka::Kafka;
pub use mongo::MongoWire;
pub use mongod::{Mongod, REPLICA_SET as MONGOD_REPLICA_SET};
pub use openbao::OpenBao;

/// A free loopback port for a test's own listener (an agent's API, say),
/// never handed out twice in one process and clear of the ephemeral range.
pub fn free_port() -> std::io::Result<u16> {
    ports::free_port()
}

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// The server's program is not installed (or an override points nowhere).
    #[error("{server} is not installed: {hint}")]
    Missing { server: &'static str, hint: String },

    /// The process exited before it became ready.
    #[error("{server} exited during start-up ({status}); log {log}:\n{tail}")]
    Exited {
        server: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },

    /// The process kept running but never answered its readiness check.
    #[error("{server} was not ready after {waited:?} (last check: {last}); log {log}:\n{tail}")]
    NotReady {
        server: &'static str,
        waited: Duration,
        last: String,
        log: PathBuf,
        tail: String,
    },

    /// An operating-system call failed (temp dir, log file, spawn, ports).
    #[error("{server}: {context}: {source}")]
    Io {
        server: &'static str,
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl TestkitError {
    /// True when the server died because a port was taken between our probe
    /// and its bind: the only start failure worth retrying with new ports.
    pub fn is_addr_in_use(&self) -> bool {
        match self {
            TestkitError::Exited { tail, .. } => {
                let t = tail.to_ascii_lowercase();
                // tansu logs Rust's `AddrInUse` / "Address in use".
                t.contains("address already in use")
                    || t.contains("eaddrinuse")
                    || t.contains("addrinuse")
                    || t.contains("address in use")
            }
            _ => false,
        }
    }
}

/// Debian `prometheus`'s `promtool` (or `FERRY_PROMTOOL`): checks and
/// unit-tests alert rules.
pub fn promtool() -> Result<std::path::PathBuf, TestkitError> {
    process::find_program("promtool", "promtool", "FERRY_PROMTOOL", false)
}

/// `systemd-analyze` (Debian `systemd`, or `FERRY_SYSTEMD_ANALYZE`).
pub fn systemd_analyze() -> Result<std::path::PathBuf, TestkitError> {
    process::find_program(
        "systemd-analyze",
        "systemd-analyze",
        "FERRY_SYSTEMD_ANALYZE",
        false,
    )
}

/// The tools venv's Python (`install.sh` makes it; PyYAML comes with moto),
/// to parse the shipped YAML files.
pub fn venv_python() -> Result<std::path::PathBuf, TestkitError> {
    let p = tools_dir().join("venv/bin/python");
    if p.is_file() {
        Ok(p)
    } else {
        Err(TestkitError::Missing {
            server: "the tools venv",
            hint: format!("no {}; run deploy/local/install.sh", p.display()),
        })
    }
}

/// Debian `chromium` (or `FERRY_CHROMIUM`), for the status page's test.
pub fn chromium() -> Result<std::path::PathBuf, TestkitError> {
    process::find_program("chromium", "chromium", "FERRY_CHROMIUM", false)
}

/// npm's `playwright-core`, as `install.sh` puts it under the tools
/// directory (`node/node_modules/playwright-core`), and `node` to run it.
pub fn playwright() -> Result<(std::path::PathBuf, std::path::PathBuf), TestkitError> {
    let module = tools_dir().join("node/node_modules/playwright-core");
    let node = process::find_program("node", "node", "FERRY_NODE", false)?;
    if module.join("package.json").is_file() {
        Ok((node, module))
    } else {
        Err(TestkitError::Missing {
            server: "playwright-core",
            hint: format!("no {}; run deploy/local/install.sh", module.display()),
        })
    }
}

/// Debian `prometheus`'s server (or `FERRY_PROMETHEUS`).
pub fn prometheus() -> Result<std::path::PathBuf, TestkitError> {
    process::find_program("prometheus", "prometheus", "FERRY_PROMETHEUS", false)
}

/// Unwraps a server start for a test.
///
/// - `Ok(server)` gives `Some(server)`.
/// - In CI (`CI` is `true` or `1`) any error panics: a server that is missing
///   in CI is a broken CI set-up, and a silent skip would hide it.
/// - Elsewhere a [`TestkitError::Missing`] prints
///   `skipping: <server> not installed; run deploy/local/install.sh` to stderr
///   and gives `None`; the test should return early.
/// - Any other error panics: an installed server that will not start is a bug.
#[track_caller]
pub fn require<T>(r: Result<T, TestkitError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) if in_ci() => {
            panic!(
                "{e}\n(CI is set: a missing or broken server fails the run, it is never skipped)"
            )
        }
        Err(TestkitError::Missing { server, .. }) => {
            // Straight to the stderr handle, not eprintln!: the test harness
            // captures the print macros of passing tests, and a skip that
            // nobody sees looks exactly like a pass.
            let _ = writeln!(
                std::io::stderr(),
                "skipping: {server} not installed; run deploy/local/install.sh"
            );
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Where `deploy/local/install.sh` puts its venv and `bin/` links.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("FERRY_TOOLS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/var/tmp/ferry-tools"),
    }
}
