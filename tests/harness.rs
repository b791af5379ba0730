//! Driving a real migration from tests: the `ferry` binary against real
//! etcd servers, a random writer, and helpers to wait on `ferry status`.
//!
//! Every wait is bounded in time; every writer in count and time; every
//! address is on 127.0.0.1.

use crate::ferry_bin;
use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One migration's journal and agent port; kills its agent on drop.
pub struct Ferry {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Default for Ferry {
    fn default() -> Self {
        Self::new()
    }
}

impl Ferry {
    pub fn new() -> Ferry {
        Ferry {
            dir: tempfile::tempdir().expect("temp dir"),
            port: ferry_testkit::free_port().expect("free port"),
        }
    }

    pub fn journal(&self) -> PathBuf {
        self.dir.path().join("journal")
    }

    /// `ferry ARGS` with this migration's journal in the environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(ferry_bin());
        c.args(args)
            .env("FERRY_JOURNAL", self.journal())
            .env_remove("FERRY_SOURCE")
            .env_remove("FERRY_TARGET")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run ferry")
    }

    /// `ferry start --no-monitor` on this journal and port.
    pub fn start(&self, source: &str, target: &str, extra: &[&str]) -> Output {
        self.start_cmd(source, target, extra)
            .output()
            .expect("run ferry")
    }

    /// [`Ferry::start`] with the agent logging at `filter` (`FERRY_LOG`)
    /// into its log, for tests that explain a failure from it.
    pub fn start_logging(
        &self,
        source: &str,
        target: &str,
        extra: &[&str],
        filter: &str,
    ) -> Output {
        self.start_cmd(source, target, extra)
            .env("FERRY_LOG", filter)
            .output()
            .expect("run ferry")
    }

    fn start_cmd(&self, source: &str, target: &str, extra: &[&str]) -> Command {
        let listen = format!("127.0.0.1:{}", self.port);
        let mut args = vec![
            "start",
            "--no-monitor",
            "--source",
            source,
            "--target",
            target,
            "--agent.listen",
            &listen,
        ];
        args.extend_from_slice(extra);
        self.cmd(&args)
    }

    /// Starts `ferry verify` of `source` against `target` at `read_rate`
    /// keys a second, keeping its progress in `progress`, and SIGKILLs it
    /// once the progress holds at least `ranges` ranges found equal (at
    /// most 120 s); returns that progress as it was read.
    pub fn verify_killed_after(
        &self,
        (source, target): (&str, &str),
        progress: &Path,
        read_rate: u64,
        ranges: usize,
    ) -> Value {
        let rate = read_rate.to_string();
        let mut slow = self
            .cmd(&[
                "verify",
                "--source",
                source,
                "--target",
                target,
                "--progress",
                progress.to_str().expect("a UTF-8 path"),
                "--read-rate",
                &rate,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run ferry verify");
        let deadline = Instant::now() + Duration::from_secs(120);
        let saved = loop {
            let saved: Option<Value> = std::fs::read(progress)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(v) = saved.filter(|v| v["done"].as_array().map_or(0, Vec::len) >= ranges) {
                break v;
            }
            assert!(Instant::now() < deadline, "the verify saved no progress");
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = slow.kill();
        let _ = slow.wait();
        saved
    }

    /// Waits (at most 5 s, the bound the continuous verifier must meet) for
    /// `status` to report a standing difference of the first route; returns
    /// the status, and logs how long it took since `written`.
    pub fn wait_for_difference(&self, written: Instant) -> Value {
        let st = self.wait_for("the difference reported", Duration::from_secs(5), |st| {
            st["verification"][0]["differences"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
        });
        eprintln!("the difference was reported after {:?}", written.elapsed());
        st
    }

    /// The agent's status, or None when no agent answers.
    pub fn status(&self) -> Option<Value> {
        let out = self.run(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Polls status until `pred` holds; panics with the last status after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(s) = self.status() {
                if pred(&s) {
                    return s;
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("timed out after {timeout:?} waiting for {what}; last status: {last:#?}\nagent log:\n{}", self.agent_log());
    }

    /// `ferry stop` (the cutover, within `timeout`), the agent gone, then
    /// `ferry verify` of `source` against `target`: each must succeed.
    pub fn cut_over_and_verify(&self, source: &str, target: &str, timeout: &str, what: &str) {
        ok(
            &self.run(&["stop", "--timeout", timeout]),
            &format!("stop ({what})"),
        );
        self.wait_agent_exit(Duration::from_secs(30));
        ok(
            &self.run(&["verify", "--source", source, "--target", target]),
            &format!("verify ({what})"),
        );
    }

    /// Once a standing difference found by the continuous verifier was
    /// repaired: waits until `status` lists none and the agent syncs again,
    /// cuts over, and checks that the window compared only part of the
    /// ranges of `target`, found nothing, and `verify` agrees.
    pub fn cut_over_after_repair(&self, source: &str, target: &str) {
        self.wait_for("the difference cleared", Duration::from_secs(30), |s| {
            s["verification"][0]["differences"]
                .as_array()
                .is_some_and(|d| d.is_empty())
                && s["state"] == "syncing"
        });
        ok(
            &self.run(&["stop", "--timeout", "60s"]),
            "stop after the repair",
        );
        self.wait_agent_exit(Duration::from_secs(30));
        let proof: Value = serde_json::from_slice(
            &std::fs::read(self.journal().join("cutover-proof.json")).unwrap(),
        )
        .unwrap();
        // Keyed by the redacted URL: the target's, or the only one.
        let checks = proof["window_checks"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let w = checks
            .get(target)
            .or_else(|| {
                (checks.len() == 1)
                    .then(|| checks.values().next())
                    .flatten()
            })
            .cloned()
            .unwrap_or_default();
        assert!(
            w["clean_ranges"].as_u64().unwrap_or(0) >= 1
                && w["compared_ranges"].as_u64().unwrap_or(99) < w["ranges"].as_u64().unwrap_or(0),
            "the window compared only part of the ranges: {proof}"
        );
        // Which ranges were verified when, and which the window compared.
        let log = w["range_log"].as_array().cloned().unwrap_or_default();
        assert_eq!(log.len() as u64, w["ranges"].as_u64().unwrap_or(0), "{w}");
        assert_eq!(
            log.iter().filter(|r| r["in_window"] == true).count() as u64,
            w["compared_ranges"].as_u64().unwrap_or(0),
            "{w}"
        );
        assert!(
            log.iter()
                .filter(|r| r["in_window"] == false)
                .all(|r| r["verified_at_ms"].as_u64().is_some_and(|t| t > 0)),
            "a range the window skipped was verified before it: {w}"
        );
        assert_eq!(proof["differences"], 0, "{proof}");
        ok(
            &self.run(&["verify", "--source", source, "--target", target]),
            "verify",
        );
    }

    /// Polls the agent's log until it holds `needle`; panics with the log after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.agent_log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {needle:?} in the agent log:\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.journal().join("agent.log")).unwrap_or_default()
    }

    /// The agent's pid, from the journal lock (present while it runs).
    pub fn agent_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.journal().join("ferry.lock"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let alive = !stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'));
        (alive && stat.contains("(ferry)")).then_some(pid)
    }

    /// SIGKILLs the agent and waits until it is gone.
    pub fn kill_agent(&self) {
        if let Some(pid) = self.agent_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.agent_pid().is_some() {
                assert!(Instant::now() < deadline, "agent {pid} did not die");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Waits for the agent to exit by itself.
    pub fn wait_agent_exit(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.agent_pid().is_some() {
            assert!(
                Instant::now() < deadline,
                "the agent did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// True when every shard streams.
pub fn all_streaming(s: &Value) -> bool {
    let shards = s["lag"]["shards"].as_array().cloned().unwrap_or_default();
    !shards.is_empty() && shards.iter().all(|sh| sh["phase"] == "streaming")
}

/// The largest lag in events over shards and targets.
pub fn max_lag(s: &Value) -> u64 {
    s["lag"]["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|sh| {
            sh["targets"]
                .as_object()
                .into_iter()
                .flat_map(|t| t.values())
        })
        .map(|t| t["lag_events"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0)
}

/// The source entries a `ferry verify` by ranges says it compared.
pub fn compared_source_entries(o: &Output) -> u64 {
    stdout(o)
        .split("compared ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in: {}", stdout(o)))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success, showing both streams otherwise.
pub fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

pub async fn connect(endpoint: &str, user: Option<(&str, &str)>) -> Client {
    let opts = user.map(|(u, p)| ConnectOptions::new().with_user(u, p));
    Client::connect([endpoint], opts)
        .await
        .expect("connect to test etcd")
}

/// Writes `n` keys `prefix/key-000000…` with values of 256 bytes, in full transactions.
pub async fn load(client: &mut Client, prefix: &str, n: u64) {
    let mut i = 0;
    while i < n {
        let ops: Vec<TxnOp> = (i..(i + 128).min(n))
            .map(|k| TxnOp::put(format!("{prefix}/key-{k:06}"), vec![b'v'; 256], None))
            .collect();
        i += ops.len() as u64;
        client
            .txn(Txn::new().and_then(ops))
            .await
            .expect("load txn");
    }
}

/// Counts of what a [`Writer`] did.
#[derive(Default, Debug)]
pub struct Written {
    pub ops: AtomicU64,
    pub errors: AtomicU64,
}

/// A background writer of puts, overwrites, deletes and lease-attached keys,
/// bounded by `max_ops` and stopped by `stop`.
pub struct Writer {
    pub stop: Arc<AtomicBool>,
    pub done: Arc<Written>,
    handle: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn spawn(
        mut client: Client,
        prefix: String,
        key_space: u64,
        max_ops: u64,
        pause: Duration,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Written::default());
        let (s, d) = (Arc::clone(&stop), Arc::clone(&done));
        let handle = tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut leases = Vec::new();
            for _ in 0..4 {
                if let Ok(l) = client.lease_grant(600, None).await {
                    leases.push(l.id());
                }
            }
            for i in 0..max_ops {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("{prefix}/key-{:06}", rng.gen_range(0..key_space));
                let roll = rng.gen_range(0..100);
                let r = if roll < 60 {
                    let len = rng.gen_range(10..400);
                    client
                        .put(key, vec![b'a' + (i % 26) as u8; len], None)
                        .await
                        .map(|_| ())
                } else if roll < 85 {
                    client.delete(key, None).await.map(|_| ())
                } else if !leases.is_empty() {
                    let lease = leases[rng.gen_range(0..leases.len())];
                    let key = format!("{prefix}/leased-{:04}", rng.gen_range(0..500));
                    client
                        .put(
                            key,
                            format!("leased-{i}"),
                            Some(PutOptions::new().with_lease(lease)),
                        )
                        .await
                        .map(|_| ())
                } else {
                    Ok(())
                };
                d.ops.fetch_add(1, Ordering::Relaxed);
                if r.is_err() {
                    d.errors.fetch_add(1, Ordering::Relaxed);
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        });
        Writer { stop, done, handle }
    }

    pub async fn finish(self) -> Arc<Written> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.handle).await;
        self.done
    }
}

/// Number of keys under `prefix`.
pub async fn count(client: &mut Client, prefix: &str) -> i64 {
    client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count")
        .count()
}

/// Sets up etcd auth: root (password `rootpw`), and user `app` (password
/// `apppw`) with role `app` allowed to read and write `prefix`.
pub async fn enable_auth(client: &mut Client, prefix: &str) {
    use etcd_client::Permission;
    client
        .user_add("root", "rootpw", None)
        .await
        .expect("add root");
    client
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    client.role_add("app").await.expect("add role");
    client
        .role_grant_permission("app", Permission::read_write(prefix).with_prefix())
        .await
        .expect("grant app");
    client
        .user_add("app", "apppw", None)
        .await
        .expect("add app");
    client
        .user_grant_role("app", "app")
        .await
        .expect("grant app role");
    client.auth_enable().await.expect("enable auth");
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
