//! SecantusDB, a MongoDB-wire-compatible server, on loopback.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{find_program, temp_dir, Proc, Spec, START_ATTEMPTS};
use crate::{ports, TestkitError};

const SERVER: &str = "secantusdb";

/// A real SecantusDB (`secantusd-py`) with its own WiredTiger storage
/// directory. It reports itself as MongoDB 8.2, a single-node replica set
/// named `secantus`, so transactions and change streams work.
///
/// `stop` and `restart` keep the port and the storage directory; WiredTiger
/// recovers the data after the kill.
pub struct MongoWire {
    // Field order matters: the process must die before its directory goes.
    proc: Proc,
    port: u16,
    dir: TempDir,
}

impl MongoWire {
    /// Starts SecantusDB on a free port and waits (up to the start-up
    /// deadline: it is a Python server and can take seconds on a cold
    /// bytecode cache) until a TCP connect succeeds.
    pub fn start() -> Result<MongoWire, TestkitError> {
        let program = find_program(SERVER, "secantusd-py", "FERRY_SECANTUSD_BIN", true)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = temp_dir(SERVER)?;
            let port = ports::free_port().map_err(|source| TestkitError::Io {
                server: SERVER,
                context: "find a free port".into(),
                source,
            })?;
            // An empty config file passed with --config turns off the search
            // for ./secantusd.toml, ~/.secantus/… and /etc/secantus/…, so a
            // config on a developer's machine cannot change the test server.
            let config = dir.path().join("secantusd.toml");
            std::fs::write(&config, "# empty: ferry-testkit uses flags only\n").map_err(
                |source| TestkitError::Io {
                    server: SERVER,
                    context: format!("write {}", config.display()),
                    source,
                },
            )?;
            match Proc::start(spec(program.clone(), dir.path(), &config, port)) {
                Ok(proc) => return Ok(MongoWire { proc, port, dir }),
                Err(e) if e.is_addr_in_use() && attempt < START_ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// `mongodb://127.0.0.1:P`, the connection string for a driver or Ferry.
    pub fn uri(&self) -> String {
        format!("mongodb://{}", self.endpoint())
    }

    /// `127.0.0.1:P`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The WiredTiger home directory, kept across `restart`.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    crate::process::delegate_to_proc!(
        stop: "Kills the server (SIGKILL, like a crash) and reaps it. Port and storage stay.",
        restart: "Stops it if it runs, then starts it on the same port and storage directory and waits until it accepts connections again."
    );
}

fn spec(program: PathBuf, dir: &Path, config: &Path, port: u16) -> Spec {
    let args: Vec<OsString> = vec![
        "--config".into(),
        config.into(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string().into(),
        "--storage-path".into(),
        dir.join("data").into(),
    ];
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Spec {
        server: SERVER,
        program,
        args,
        cwd: dir.to_path_buf(),
        scrub_env: &["SECANTUS"],
        env: Vec::new(),
        start_timeout: None,
        log: dir.join("secantusd.log"),
        ready: Box::new(move || {
            // The server binds only after opening its storage, so an accepted
            // connection means it is serving.
            TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .map(drop)
                .map_err(|e| format!("connect {addr}: {e}"))
        }),
    }
}
