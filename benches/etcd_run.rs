//! What the etcd benches share: the `ferry` binary driven as an operator
//! does, etcd clients, the loaded keys, the source's auth.

use etcd_client::{Client, ConnectOptions, GetOptions, Txn, TxnOp};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn ferry_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps")
        .join("ferry");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p ferry-cli` first",
        bin.display()
    );
    bin
}

pub async fn connect(ep: &str, user: Option<(&str, &str)>) -> Client {
    Client::connect(
        [ep],
        user.map(|(u, p)| ConnectOptions::new().with_user(u, p)),
    )
    .await
    .expect("connect")
}

pub fn value(i: u64) -> Vec<u8> {
    let mut v = format!("{i:016}").into_bytes();
    v.resize(256, b'v');
    v
}

pub async fn load(c: &mut Client, prefix: &str, n: u64) {
    let mut i = 0;
    while i < n {
        let ops: Vec<TxnOp> = (i..(i + 128).min(n))
            .map(|k| TxnOp::put(format!("{prefix}/k{k:07}"), value(k), None))
            .collect();
        i += ops.len() as u64;
        c.txn(Txn::new().and_then(ops)).await.expect("txn");
    }
}

pub async fn count(c: &mut Client, prefix: &str) -> i64 {
    c.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await
    .expect("count")
    .count()
}

/// One migration: a journal directory and an agent port.
pub struct FerryRun {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Default for FerryRun {
    fn default() -> Self {
        Self::new()
    }
}

impl FerryRun {
    pub fn new() -> Self {
        FerryRun {
            dir: tempfile::tempdir().expect("tmp"),
            port: ferry_testkit::free_port().expect("port"),
        }
    }
    pub fn journal(&self) -> String {
        self.dir.path().join("journal").display().to_string()
    }
    pub fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new(ferry_bin())
            .args(args)
            .env("FERRY_JOURNAL", self.journal())
            .stdin(Stdio::null())
            .output()
            .expect("ferry")
    }
    pub fn start(&self, src: &str, tgt: &str, extra: &[&str]) {
        let listen = format!("127.0.0.1:{}", self.port);
        let mut a = vec![
            "start",
            "--no-monitor",
            "--source",
            src,
            "--target",
            tgt,
            "--agent.listen",
            &listen,
        ];
        a.extend_from_slice(extra);
        let o = self.cmd(&a);
        assert!(
            o.status.success(),
            "ferry start: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    pub fn status(&self) -> Option<serde_json::Value> {
        let o = self.cmd(&["status", "--json"]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).ok())
            .flatten()
    }
    pub fn wait_caught_up(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            assert!(
                Instant::now() < deadline,
                "ferry did not catch up in {limit:?}"
            );
            if let Some(s) = self.status() {
                let shards = s["lag"]["shards"].as_array().cloned().unwrap_or_default();
                let streaming =
                    !shards.is_empty() && shards.iter().all(|sh| sh["phase"] == "streaming");
                let lag: u64 = shards
                    .iter()
                    .flat_map(|sh| {
                        sh["targets"]
                            .as_object()
                            .cloned()
                            .unwrap_or_default()
                            .into_values()
                    })
                    .map(|t| t["lag_events"].as_u64().unwrap_or(0))
                    .max()
                    .unwrap_or(0);
                if streaming && lag == 0 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    pub fn stop(&self) -> serde_json::Value {
        let o = self.cmd(&["stop", "--timeout", "120s"]);
        assert!(
            o.status.success(),
            "ferry stop: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let proof =
            std::fs::read(self.dir.path().join("journal/cutover-proof.json")).expect("proof");
        serde_json::from_slice(&proof).expect("proof json")
    }
    pub fn abort(&self) {
        let _ = self.cmd(&["stop", "--abort"]);
    }
}

pub async fn enable_auth(c: &mut Client, prefix: &str) {
    use etcd_client::Permission;
    c.user_add("root", "rootpw", None).await.expect("root");
    c.user_grant_role("root", "root").await.expect("root role");
    c.role_add("app").await.expect("role");
    c.role_grant_permission("app", Permission::read_write(prefix).with_prefix())
        .await
        .expect("perm");
    c.user_add("app", "apppw", None).await.expect("app");
    c.user_grant_role("app", "app").await.expect("app role");
    c.auth_enable().await.expect("auth");
}

/// Keeps changing `prefix/load-0` … `load-4999` as the application user
/// until `stop` (at most ten million puts): the write load a cutover runs
/// under; after the source turns read-only the puts fail and go on.
pub fn write_load(
    rt: &tokio::runtime::Runtime,
    endpoint: String,
    prefix: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    rt.spawn(async move {
        let mut c = connect(&endpoint, Some(("app", "apppw"))).await;
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 10_000_000 {
            let _ = c
                .put(format!("{prefix}/load-{}", i % 5000), "x", None)
                .await;
            i += 1;
        }
    })
}

/// The agent's time per stage of an event's way
/// (`ferry_pipeline_seconds`, summaries over the last minute), one line
/// per stage: p50 and p99 in ms. Read from `/metrics` with curl.
pub fn pipeline_stages(port: u16) -> String {
    let out = Command::new("curl")
        .args(["-sk", &format!("https://127.0.0.1:{port}/metrics")])
        .output();
    let Ok(out) = out else {
        return "  (curl is not installed: no stage figures)".into();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows: std::collections::BTreeMap<String, (f64, f64, u64)> = Default::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("ferry_pipeline_seconds") else {
            continue;
        };
        let field = |name: &str| {
            rest.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_string)
        };
        let value: f64 = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let Some(stage) = field("stage") else {
            continue;
        };
        let row = rows.entry(stage).or_default();
        if rest.starts_with("_count") {
            row.2 = value as u64;
        } else if rest.starts_with('{') {
            match field("quantile").as_deref() {
                Some("0.5") => row.0 = value * 1000.0,
                Some("0.99") => row.1 = value * 1000.0,
                _ => {}
            }
        }
    }
    rows.iter()
        .map(|(stage, (p50, p99, n))| {
            format!("  {stage:<10} p50 {p50:7.2} ms  p99 {p99:7.2} ms  ({n} observations)")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
