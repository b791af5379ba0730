//! Helpers shared by the integration tests.

use ferry_core::{ShardId, ShardSpan, StoreUrl};
use ferry_journal::{Journal, PersistPolicy};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use ferry_lag::LagTracker;
use ferry_mongo::{
    Catalog, FenceHandle, MongoSink, MongoStore, MongoTailer, SinkOptions, TailerOptions,
};
use ferry_replay::worker::{self, Shutdown, WorkerConfig};
use ferry_replay::Sink;
use ferry_testkit::{require, MongoWire, Mongod};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{
    doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, Document, Regex, Timestamp,
};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The MongoDB of the tests: a real mongod 7.0 (one-member replica set).
pub fn mongo() -> Option<Mongod> {
    require(Mongod::start())
}

/// SecantusDB, the second implementation of the wire protocol, where it
/// adds coverage.
pub fn secantus() -> Option<MongoWire> {
    require(MongoWire::start())
}

pub async fn store(uri: &str) -> MongoStore {
    MongoStore::connect(&StoreUrl::parse(uri).unwrap())
        .await
        .unwrap()
}

/// A URI for a test's own writers: a server with a copy running into it and
/// out of it on two cores (SecantusDB especially, one Python process) can
/// take seconds to answer the driver's monitor; the test must not fail on
/// that.
pub fn patient(uri: &str) -> String {
    format!("{uri}/?connectTimeoutMS=60000&serverSelectionTimeoutMS=120000&w=1")
}

pub async fn client(uri: &str) -> mongodb::Client {
    mongodb::Client::with_uri_str(uri).await.unwrap()
}

/// Waits until `f` holds, polling every 100 ms, for at most `limit`.
pub async fn until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Test documents: every 20th has every common BSON type, the others a
/// nested document, an array and the indexed fields (SecantusDB, a Python
/// server, stores the light ones several times faster).
/// Collections are created by the first `fill`, before any concurrent
/// writer: mongod under wine crashes when several connections create one
/// collection at once. `i` makes it
/// unique (the `email` field carries a unique index).
pub fn rich_doc(i: i64) -> Document {
    if i % 20 != 0 {
        return doc! {
            "_id": i,
            "email": format!("user{i}@example.org"),
            "n": (i % 1000) as i32,
            "big": i * 1_000_000_007,
            "nested": {"a": {"b": i as f64 / 3.0}, "s": "text"},
            "list": [i, "two", {"k": i % 7}],
        };
    }
    doc! {
        "_id": i,
        "email": format!("user{i}@example.org"),
        "n": (i % 1000) as i32,
        "big": i * 1_000_000_007,
        "price": Decimal128::from_bytes((i as u128).to_le_bytes()),
        "ratio": i as f64 / 7.0,
        "ok": i % 2 == 0,
        "none": Bson::Null,
        "when": DateTime::from_millis(1_700_000_000_000 + i),
        "ts": Timestamp { time: 1_700_000_000, increment: (i % 1000) as u32 },
        "oid": ObjectId::from_bytes([(i % 251) as u8; 12]),
        "bin": Binary { subtype: BinarySubtype::Generic, bytes: (i as u32).to_be_bytes().to_vec() },
        "uuid": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7u8; 16] },
        "re": Regex { pattern: "^a.*".into(), options: "i".into() },
        "code": Bson::JavaScriptCode("function () { return 1; }".into()),
        "min": Bson::MinKey,
        "max": Bson::MaxKey,
        "nested": {"a": {"b": {"c": [1, "two", 3.0, {"d": i}]}}, "tags": ["x", "y"]},
        "list": [i, i + 1, {"k": "v"}, [1, 2]],
    }
}

/// Inserts documents `from..to` into `coll`, 1000 per call.
pub async fn fill(coll: &mongodb::Collection<Document>, from: i64, to: i64) {
    let mut i = from;
    while i < to {
        let end = (i + 1000).min(to);
        coll.insert_many((i..end).map(rich_doc)).await.unwrap();
        i = end;
    }
}

pub fn journal() -> (tempfile::TempDir, Arc<RocksJournal>) {
    let dir = tempfile::tempdir().unwrap();
    let j = RocksJournal::open(dir.path(), OpenMode::Create, PersistPolicy::Never).unwrap();
    (dir, Arc::new(j))
}

pub const SOURCE: &str = "source-mongo";
pub const TARGET: &str = "target-mongo";

/// A running pipeline: tailer into a journal, one worker per shard into a sink.
pub struct Pipeline {
    pub journal: Arc<RocksJournal>,
    pub lag: Arc<LagTracker>,
    pub sink: Arc<MongoSink>,
    pub tailer: JoinHandle<Result<(), ferry_mongo::MongoError>>,
    pub workers: Vec<JoinHandle<Result<(), ferry_replay::SinkError>>>,
    pub fence: FenceHandle,
    pub span: ShardSpan,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Pipeline {
    /// Pre-checks as `ferry start` would (with `force`), then starts.
    pub async fn start(source: MongoStore, target: MongoStore, shards: u32) -> Pipeline {
        let namespaces = ferry_mongo::precheck(&source, &target, false)
            .await
            .unwrap();
        let catalog = Catalog::read(&source, &namespaces).await.unwrap();
        let (dir, journal) = journal();
        Self::run(source, target, shards, catalog, dir, journal).await
    }

    /// Starts again on the journal a [`Pipeline::stop_keeping_journal`]
    /// left, as a restarted agent does (no pre-check: the target is not
    /// empty).
    pub async fn resume(
        source: MongoStore,
        target: MongoStore,
        shards: u32,
        dir: tempfile::TempDir,
    ) -> Pipeline {
        let namespaces = source.selected_namespaces().await.unwrap();
        let catalog = Catalog::read(&source, &namespaces).await.unwrap();
        let j = RocksJournal::open(dir.path(), OpenMode::Existing, PersistPolicy::Never).unwrap();
        Self::run(source, target, shards, catalog, dir, Arc::new(j)).await
    }

    async fn run(
        source: MongoStore,
        target: MongoStore,
        shards: u32,
        catalog: Catalog,
        dir: tempfile::TempDir,
        journal: Arc<RocksJournal>,
    ) -> Pipeline {
        let lag = Arc::new(LagTracker::new());
        let (stop, shutdown) = Shutdown::new();
        // A span not starting at 0, as one source among several would get.
        let span = ShardSpan {
            first: 2,
            count: shards,
        };
        let tailer = MongoTailer::new(
            source.clone(),
            SOURCE.into(),
            span,
            TailerOptions::default(),
        );
        let fence = tailer.fence_handle();
        let sink = Arc::new(MongoSink::new(
            target,
            TARGET.into(),
            SinkOptions {
                catalog: Some(catalog),
                sweep_source: Some(source),
                span: Some(span),
                journal_id: Some("test-journal".into()),
                ..SinkOptions::default()
            },
        ));
        sink.startup().await.unwrap();
        let t = tokio::spawn(tailer.run(Arc::clone(&journal), Arc::clone(&lag), shutdown.clone()));
        let workers = span
            .iter()
            .map(|s| {
                tokio::spawn(worker::run(
                    Arc::clone(&journal),
                    Arc::clone(&sink),
                    s,
                    Arc::clone(&lag),
                    None,
                    WorkerConfig::default(),
                    shutdown.clone(),
                ))
            })
            .collect();
        Pipeline {
            journal,
            lag,
            sink,
            tailer: t,
            workers,
            fence,
            span,
            stop,
            _dir: dir,
        }
    }

    /// True when every shard applied everything journaled.
    pub fn caught_up(&self) -> bool {
        self.span.iter().all(|s: ShardId| {
            let last = self.journal.bounds(s).unwrap().map_or(0, |b| b.last);
            self.journal.applied(TARGET, s).unwrap().unwrap_or(0) >= last
        })
    }

    /// Fences at the source's cluster time and waits until the target
    /// applied it.
    pub async fn drain(&self, source: &MongoStore, limit: Duration) {
        let head = source.head_position().await.unwrap();
        tokio::time::timeout(limit, self.fence.fence(head))
            .await
            .expect("fence in time")
            .unwrap();
        until("replay caught up", limit, || async { self.caught_up() }).await;
    }

    pub async fn stop(self) -> Result<(), ferry_mongo::MongoError> {
        self.stop_keeping_journal().await.0
    }

    /// Stops and gives back the journal directory (closed).
    pub async fn stop_keeping_journal(
        self,
    ) -> (Result<(), ferry_mongo::MongoError>, tempfile::TempDir) {
        self.stop.send(true).unwrap();
        for w in self.workers {
            w.await.unwrap().unwrap();
        }
        self.sink.shutdown().await;
        let r = self.tailer.await.unwrap();
        drop(self.journal);
        (r, self._dir)
    }
}

/// A SecantusDB started with extra flags (standalone, auth), which the
/// testkit's `MongoWire` does not offer; killed on drop. (The bad-input
/// tests keep SecantusDB: its refusals are a second server's wording.)
pub struct Secantus {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Secantus {
    pub fn start(args: &[&str]) -> Option<Secantus> {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, args)
    }

    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Option<Secantus> {
        let bin = std::env::var_os("FERRY_SECANTUSD_BIN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| ferry_testkit::tools_dir().join("bin/secantusd-py"));
        if !bin.exists() {
            // Same convention as the testkit: MongoWire::start decides.
            return None;
        }
        let port = ferry_testkit::free_port().unwrap();
        let mut s = Secantus {
            child: None,
            port,
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        s.launch(&bin);
        Some(s)
    }

    fn launch(&mut self, bin: &std::path::Path) {
        let config = self.dir.path().join("empty.toml");
        std::fs::write(&config, "").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new(bin)
                .arg("--config")
                .arg(&config)
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &self.port.to_string(),
                    "--storage-path",
                ])
                .arg(self.dir.path().join("data"))
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                assert!(Instant::now() < deadline, "secantusd did not start");
                // A restart right after a kill can find the storage still
                // locked; the server then exits and is started again.
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = child.try_wait() {
                self.child = Some(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    /// Kills it and gives back its storage directory.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        self.kill();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Secantus {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Change events putting `_id`s `ids` of `ns`, shard 0, sequences from `first`.
pub fn puts(
    ns: &ferry_mongo::Namespace,
    ids: std::ops::Range<i64>,
    first: u64,
) -> Vec<ferry_core::Event> {
    ids.enumerate()
        .map(|(n, i)| ferry_core::Event {
            shard: ShardId(0),
            seq: first + n as u64,
            position: ferry_core::Position::with_token(1, vec![1]),
            key: ferry_mongo::key::encode(ns, mongodb::bson::RawBsonRef::Int64(i)),
            op: ferry_core::Op::Put {
                value: ferry_core::Value::Plain(
                    mongodb::bson::RawDocumentBuf::from_document(&doc! {"_id": i, "v": "x"})
                        .unwrap()
                        .into_bytes(),
                ),
                meta: ferry_core::StoreMeta::Mongo {
                    db: ns.db.clone(),
                    collection: ns.coll.clone(),
                },
            },
            source_ts_ms: 0,
            capture_ts_ms: 0,
        })
        .collect()
}
