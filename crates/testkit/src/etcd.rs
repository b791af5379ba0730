//! A single-member etcd cluster on loopback.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::process::{find_program, temp_dir, Proc, Spec, START_ATTEMPTS};
use crate::{http, ports, TestkitError};

const SERVER: &str = "etcd";

/// A real etcd (Debian's `etcd-server`, 3.4) with its own data directory.
///
/// `stop` and `restart` keep the client and peer ports and the data, so a
/// test can take etcd away under a running pipeline and bring it back.
pub struct Etcd {
    // Field order matters: the process must die before its directory goes.
    proc: Proc,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
}

impl Etcd {
    /// Starts etcd on two free loopback ports and waits until
    /// `GET /health` reports `"health":"true"`.
    pub fn start() -> Result<Etcd, TestkitError> {
        Self::start_with_args(&[])
    }

    /// Like [`Etcd::start`], with extra etcd flags (e.g.
    /// `--max-request-bytes=4194304`); restarts keep them.
    pub fn start_with_args(extra: &[&str]) -> Result<Etcd, TestkitError> {
        let program = find_program(SERVER, "etcd", "FERRY_ETCD_BIN", false)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = temp_dir(SERVER)?;
            let client_port = port()?;
            let peer_port = port()?;
            let spec = spec(program.clone(), dir.path(), client_port, peer_port, extra);
            match Proc::start(spec) {
                Ok(proc) => {
                    return Ok(Etcd {
                        proc,
                        client_port,
                        peer_port,
                        dir,
                    })
                }
                Err(e) if e.is_addr_in_use() && attempt < START_ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// `127.0.0.1:PORT`, the client endpoint (gRPC and the JSON gateway).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The store URL Ferry takes: `etcd://127.0.0.1:PORT/prefix` (a leading
    /// `/` on `prefix` is dropped, as Ferry's URLs carry the prefix without it).
    pub fn url(&self, prefix: &str) -> String {
        format!(
            "etcd://{}/{}",
            self.endpoint(),
            prefix.trim_start_matches('/')
        )
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The etcd data directory (inside the handle's temp dir).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    crate::process::delegate_to_proc!(
        stop: "Kills etcd (SIGKILL, like a crash) and reaps it. Ports and data stay.",
        restart: "Stops etcd if it runs, then starts it on the same ports and data directory and waits until it is healthy again."
    );
}

fn port() -> Result<u16, TestkitError> {
    ports::free_port().map_err(|source| TestkitError::Io {
        server: SERVER,
        context: "find a free port".into(),
        source,
    })
}

fn spec(program: PathBuf, dir: &Path, client: u16, peer: u16, extra: &[&str]) -> Spec {
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let args: Vec<OsString> = vec![
        "--name".into(),
        "ferry-test".into(),
        "--data-dir".into(),
        dir.join("data").into(),
        "--listen-client-urls".into(),
        client_url.clone().into(),
        "--advertise-client-urls".into(),
        client_url.into(),
        "--listen-peer-urls".into(),
        peer_url.clone().into(),
        "--initial-advertise-peer-urls".into(),
        peer_url.clone().into(),
        "--initial-cluster".into(),
        format!("ferry-test={peer_url}").into(),
        "--initial-cluster-state".into(),
        "new".into(),
        // A lone member elects itself after one election timeout; 250 ms
        // instead of 1 s makes start and restart several times faster and
        // cannot cause leader churn, as there is no other member.
        "--heartbeat-interval".into(),
        "25".into(),
        "--election-timeout".into(),
        "250".into(),
        "--logger=zap".into(),
        "--log-level=warn".into(),
    ];
    let args: Vec<OsString> = args
        .into_iter()
        .chain(extra.iter().map(OsString::from))
        .collect();
    let addr = format!("127.0.0.1:{client}");
    Spec {
        server: SERVER,
        program,
        args,
        cwd: dir.to_path_buf(),
        scrub_env: &["ETCD_", "ETCDCTL_"],
        env: Vec::new(),
        start_timeout: None,
        log: dir.join("etcd.log"),
        ready: Box::new(move || {
            let r = http::get(&addr, "/health", &[]).map_err(|e| format!("GET /health: {e}"))?;
            // 3.4 answers 503 with "health":"false" until it has a leader.
            if r.status == 200 && r.body.contains(r#""health":"true""#) {
                Ok(())
            } else {
                Err(format!("GET /health: {} {}", r.status, r.body.trim()))
            }
        }),
    }
}
