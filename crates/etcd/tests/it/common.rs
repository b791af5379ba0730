//! Helpers shared by the integration tests.

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use ferry_core::{Event, Op, Position, Seq, ShardId, StoreMeta, StoreUrl, Value};
use ferry_etcd::{EtcdSink, EtcdStore, EtcdTailer, TailerOptions};
use ferry_journal::{Journal, PersistPolicy};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use ferry_lag::LagTracker;
use ferry_replay::worker::{self, Shutdown, WorkerConfig};
use ferry_replay::Sink;
use ferry_testkit::{require, Etcd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub fn etcd() -> Option<Etcd> {
    require(Etcd::start())
}

pub async fn store(etcd: &Etcd, prefix: &str) -> EtcdStore {
    let url = StoreUrl::parse(&etcd.url(prefix)).unwrap();
    EtcdStore::connect(&url).await.unwrap()
}

pub async fn client(etcd: &Etcd) -> Client {
    Client::connect([etcd.endpoint()], None).await.unwrap()
}

/// Waits until `f` holds, polling every 50 ms, for at most `limit`.
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `n` keys `{prefix}{i:06}` with values of `size` bytes, 100 per
/// transaction.
pub async fn fill(c: &mut Client, prefix: &str, n: usize, size: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| TxnOp::put(format!("{prefix}{i:06}"), value(*i, size), None))
            .collect();
        c.txn(Txn::new().and_then(ops)).await.unwrap();
    }
}

pub fn value(i: usize, size: usize) -> Vec<u8> {
    let mut v = format!("v{i}-").into_bytes();
    v.resize(size.max(v.len()), b'.');
    v
}

pub async fn put_leased(c: &mut Client, key: &str, v: &str, lease: i64) {
    c.put(key, v, Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
}

pub fn journal() -> (tempfile::TempDir, Arc<RocksJournal>) {
    let dir = tempfile::tempdir().unwrap();
    let j = RocksJournal::open(dir.path(), OpenMode::Create, PersistPolicy::Never).unwrap();
    (dir, Arc::new(j))
}

/// A put event for the sink tests (shard and sequence as given).
pub fn put(shard: u32, seq: Seq, key: &str, v: Vec<u8>) -> Event {
    ev(
        shard,
        seq,
        key,
        Op::Put {
            value: Value::Plain(v),
            meta: StoreMeta::None,
        },
    )
}

pub fn del(shard: u32, seq: Seq, key: &str) -> Event {
    ev(
        shard,
        seq,
        key,
        Op::Delete {
            meta: StoreMeta::None,
        },
    )
}

pub fn ev(shard: u32, seq: Seq, key: &str, op: Op) -> Event {
    Event {
        shard: ShardId(shard),
        seq,
        position: Position::at(seq),
        key: key.as_bytes().to_vec(),
        op,
        source_ts_ms: 0,
        capture_ts_ms: 0,
    }
}

/// A running pipeline: tailer into a journal, one worker per shard into a sink.
pub struct Pipeline {
    pub journal: Arc<RocksJournal>,
    pub lag: Arc<LagTracker>,
    pub sink: Arc<EtcdSink>,
    pub tailer: JoinHandle<Result<(), ferry_etcd::EtcdError>>,
    pub workers: Vec<JoinHandle<Result<(), ferry_replay::SinkError>>>,
    pub fence: ferry_etcd::FenceHandle,
    pub shards: u32,
    stop: watch::Sender<bool>,
    dir: tempfile::TempDir,
}

pub const SOURCE: &str = "source-etcd";
pub const TARGET: &str = "target-etcd";

impl Pipeline {
    pub async fn start(
        source: EtcdStore,
        target: EtcdStore,
        shards: u32,
        opts: TailerOptions,
    ) -> Pipeline {
        let (dir, journal) = journal();
        Self::resume(source, target, (dir, journal), shards, opts).await
    }

    /// Starts on an existing journal (kept by [`Pipeline::stop_keep_journal`]).
    pub async fn resume(
        source: EtcdStore,
        target: EtcdStore,
        (dir, journal): (tempfile::TempDir, Arc<RocksJournal>),
        shards: u32,
        opts: TailerOptions,
    ) -> Pipeline {
        let lag = Arc::new(LagTracker::new());
        let (stop, shutdown) = Shutdown::new();
        let source_prefix = source.prefix().to_vec();
        let tailer = EtcdTailer::new(
            source,
            SOURCE.into(),
            ferry_core::ShardSpan::all(shards),
            opts,
        );
        let fence = tailer.fence_handle();
        let sink = Arc::new(EtcdSink::new(
            target,
            source_prefix,
            TARGET.into(),
            ferry_core::ShardSpan::all(shards),
            Some(tailer.liveness()),
        ));
        sink.startup().await.unwrap();
        let t = tokio::spawn(tailer.run(Arc::clone(&journal), Arc::clone(&lag), shutdown.clone()));
        let workers = (0..shards)
            .map(|s| {
                tokio::spawn(worker::run(
                    Arc::clone(&journal),
                    Arc::clone(&sink),
                    ShardId(s),
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
            shards,
            stop,
            dir,
        }
    }

    /// True when every shard applied everything journaled.
    pub fn caught_up(&self) -> bool {
        (0..self.shards).all(|s| {
            let last = self
                .journal
                .bounds(ShardId(s))
                .unwrap()
                .map_or(0, |b| b.last);
            self.journal
                .applied(TARGET, ShardId(s))
                .unwrap()
                .unwrap_or(0)
                >= last
        })
    }

    /// Fences at the source head and waits until the target applied it.
    pub async fn drain(&self, source: &EtcdStore, limit: Duration) {
        let head = source.head_revision().await.unwrap();
        tokio::time::timeout(limit, self.fence.fence(head))
            .await
            .expect("fence in time")
            .unwrap();
        until("replay caught up", limit, || async { self.caught_up() }).await;
    }

    pub async fn stop(self) -> Result<(), ferry_etcd::EtcdError> {
        self.stop_keep_journal().await.1
    }

    /// Stops everything; gives back the journal (and its directory).
    pub async fn stop_keep_journal(
        self,
    ) -> (
        (tempfile::TempDir, Arc<RocksJournal>),
        Result<(), ferry_etcd::EtcdError>,
    ) {
        self.stop.send(true).unwrap();
        for w in self.workers {
            w.await.unwrap().unwrap();
        }
        self.sink.shutdown().await;
        let r = self.tailer.await.unwrap();
        ((self.dir, self.journal), r)
    }
}
