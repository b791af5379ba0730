//! An OpenBao dev server (the Vault HTTP API) on loopback.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::process::{find_program, temp_dir, Proc, Spec, START_ATTEMPTS};
use crate::{http, ports, TestkitError};

const SERVER: &str = "openbao";
const ROOT_TOKEN: &str = "root";

/// A real OpenBao in dev mode: unsealed, in-memory storage, root token
/// `root`, and a KV v2 engine mounted at `secret/`.
///
/// Dev mode keeps nothing on disk, so a `restart` gives an empty server on
/// the same address: right for outage tests, not for durability tests.
pub struct OpenBao {
    // Field order matters: the process must die before its directory goes.
    proc: Proc,
    port: u16,
    _dir: TempDir,
}

impl OpenBao {
    /// Starts `bao server -dev` on a free port `P` (with `P + 1`, its cluster
    /// port, free too) and waits until `GET /v1/sys/health` answers 200 and
    /// the `secret/` KV v2 mount serves requests.
    pub fn start() -> Result<OpenBao, TestkitError> {
        let program = find_program(SERVER, "bao", "FERRY_BAO_BIN", true)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = temp_dir(SERVER)?;
            let port = ports::free_port_pair().map_err(|source| TestkitError::Io {
                server: SERVER,
                context: "find two adjacent free ports".into(),
                source,
            })?;
            match Proc::start(spec(program.clone(), dir.path(), port)) {
                Ok(proc) => {
                    return Ok(OpenBao {
                        proc,
                        port,
                        _dir: dir,
                    })
                }
                Err(e) if e.is_addr_in_use() && attempt < START_ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// `http://127.0.0.1:P`, what `VAULT_ADDR` / `BAO_ADDR` would be.
    pub fn addr(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    /// `127.0.0.1:P`, for [`http`](crate::http) calls.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The store URL Ferry takes: `vault://127.0.0.1:P/<mount>/<path>`,
    /// e.g. `url("secret/app")`. The token is not in it; see [`token`](Self::token).
    pub fn url(&self, mount_and_path: &str) -> String {
        format!(
            "vault://{}/{}",
            self.endpoint(),
            mount_and_path.trim_start_matches('/')
        )
    }

    /// The dev root token, `root`.
    pub fn token(&self) -> &'static str {
        ROOT_TOKEN
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    crate::process::delegate_to_proc!(
        stop: "Kills the server (SIGKILL) and reaps it; its secrets are gone.",
        restart: "Stops it if it runs and starts a fresh, empty dev server on the same port with the same root token."
    );
}

fn spec(program: PathBuf, dir: &Path, port: u16) -> Spec {
    let addr = format!("127.0.0.1:{port}");
    let args: Vec<OsString> = vec![
        "server".into(),
        "-dev".into(),
        format!("-dev-root-token-id={ROOT_TOKEN}").into(),
        format!("-dev-listen-address={addr}").into(),
        // Without this the dev server writes ~/.vault-token, a side effect
        // on the developer's home directory.
        "-dev-no-store-token".into(),
    ];
    Spec {
        server: SERVER,
        program,
        args,
        cwd: dir.to_path_buf(),
        // The server reads BAO_*/VAULT_* (API address, dev token, ...).
        scrub_env: &["BAO_", "VAULT_"],
        env: Vec::new(),
        start_timeout: None,
        log: dir.join("bao.log"),
        ready: Box::new(move || {
            // 200 = initialized, unsealed and active; anything else is not yet.
            probe(&addr, "/v1/sys/health", &[])?;
            // Health turns 200 before the dev server's `secret/` KV v2 mount
            // finishes its asynchronous "upgrade": until then every KV call
            // answers 400 "Upgrading from non-versioned to versioned data"
            // (seen under load: a write right after health failed). Reading
            // the mount's config goes through the same gate and has no side
            // effects, so 200 there means secrets can be written.
            probe(&addr, "/v1/secret/config", &[("X-Vault-Token", ROOT_TOKEN)])
        }),
    }
}

/// `Ok(())` when `GET path` answers 200, else why not.
fn probe(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<(), String> {
    let r = http::get(addr, path, headers).map_err(|e| format!("GET {path}: {e}"))?;
    if r.status == 200 {
        Ok(())
    } else {
        Err(format!("GET {path}: {} {}", r.status, r.body.trim()))
    }
}
