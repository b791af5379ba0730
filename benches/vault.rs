//! Vault KV v2 benchmark: secrets copied per second by Ferry's Vault sink
//! against the target's own ceiling, both in this run, on the same target
//! OpenBao.
//!
//! - Ceiling: every version of every secret written directly with
//!   check-and-set, by the same client type (`ferry_vault::VaultStore`,
//!   reqwest) with the same concurrency as Ferry's workers (one task per
//!   shard, each with the secrets of its shard, in version order).
//! - Ferry, apply: the journal already holds the snapshot (the Vault
//!   tailer took it first); the replay workers then apply it through the
//!   agent's sink (values unsealed, check-and-set on the version before,
//!   settings and creation times once per secret and batch). Timed from the
//!   workers' start until every shard applied everything.
//! - Ferry, end to end: tailer and workers together from an empty journal
//!   (reads the source OpenBao too, on the same two cores).
//!
//! Run: `cargo bench -p ferry-benches --bench vault`
//! Env: `FERRY_BENCH_VAULT_SECRETS` (400), `FERRY_BENCH_VAULT_VERSIONS` (5),
//!      `FERRY_BENCH_VAULT_SHARDS` (4).

use ferry_agent::sinks::TargetSink;
use ferry_core::{ShardSpan, StoreUrl};
use ferry_journal::seal::SealKey;
use ferry_journal::{Journal, PersistPolicy};
use ferry_journal_rocks::{OpenMode, RocksJournal};
use ferry_lag::{LagTracker, Phase};
use ferry_replay::{worker, Shutdown, WorkerConfig};
use ferry_testkit::OpenBao;
use ferry_vault::pipeline::{TailerOptions, VaultSink, VaultTailer};
use ferry_vault::versions::CasWrite;
use ferry_vault::VaultStore;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn data(s: u64, v: u64) -> Map<String, Value> {
    json!({"v": v, "password": format!("pw-{s}-{v}"), "note": "x".repeat(200)})
        .as_object()
        .cloned()
        .expect("object")
}

async fn store(bao: &OpenBao, path: &str) -> VaultStore {
    let url = StoreUrl::parse(&format!("vault://root@{}/secret/{path}", bao.endpoint())).unwrap();
    VaultStore::connect(&url).await.expect("connect")
}

/// Writes `secrets` × `versions` under `root`, `conc` tasks at once, each
/// secret's versions in order with check-and-set.
async fn write_direct(
    bao: &OpenBao,
    root: &str,
    secrets: u64,
    versions: u64,
    conc: u64,
) -> Duration {
    let s = Arc::new(store(bao, root).await);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..conc {
        let s = Arc::clone(&s);
        tasks.spawn(async move {
            for i in (0..secrets).filter(|i| i % conc == w) {
                let path = format!("{}/s{i:05}", s.root());
                for v in 1..=versions {
                    let r = s.write_cas(&path, &data(i, v), v - 1).await.expect("write");
                    assert_eq!(r, CasWrite::Written(v));
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    t0.elapsed()
}

fn caught_up(lag: &LagTracker, target: &str) -> bool {
    let s = lag.snapshot();
    s.shards.iter().all(|sh| {
        sh.phase == Phase::Streaming
            && sh
                .targets
                .get(target)
                .is_some_and(|t| t.applied_seq >= sh.journaled_seq)
    })
}

/// Runs the pipeline; `tail_first`: journal the whole snapshot before the
/// workers start (and time only the workers).
async fn ferry(
    src: &OpenBao,
    dst: &OpenBao,
    root: &str,
    shards: u32,
    tail_first: bool,
) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(
        RocksJournal::open(dir.path(), OpenMode::Create, PersistPolicy::EveryBatch).unwrap(),
    );
    let seal = Arc::new(SealKey::load_or_create(&dir.path().join("journal.key")).unwrap());
    let lag = Arc::new(LagTracker::new());
    let span = ShardSpan::all(shards);
    let (stop, shutdown) = Shutdown::new();
    let tailer = VaultTailer::new(
        store(src, "bench").await,
        "source".into(),
        span,
        TailerOptions::default(),
        Arc::clone(&seal),
    );
    let tail = {
        let (j, l, s) = (Arc::clone(&journal), Arc::clone(&lag), shutdown.clone());
        tokio::spawn(async move { tailer.run(j, l, s).await })
    };
    let name = format!("vault://{}/secret/{root}", dst.endpoint());
    let sink = Arc::new(TargetSink::new(
        ferry_replay::SharedSink::new(VaultSink::new(store(dst, root).await, name.clone())),
        Arc::clone(&seal),
        None,
    ));
    ferry_replay::Sink::startup(sink.as_ref()).await.unwrap();
    for shard in span.iter() {
        lag.register(shard, 0, &[(name.clone(), 0)]);
    }
    if tail_first {
        let deadline = Instant::now() + Duration::from_secs(600);
        while !lag
            .snapshot()
            .shards
            .iter()
            .all(|s| s.phase == Phase::Streaming)
        {
            assert!(Instant::now() < deadline, "snapshot took over 10 minutes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for shard in span.iter() {
        let (j, k, l, s) = (
            Arc::clone(&journal),
            Arc::clone(&sink),
            Arc::clone(&lag),
            shutdown.clone(),
        );
        workers.push(tokio::spawn(async move {
            worker::run(j, k, shard, l, None, WorkerConfig::default(), s).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    tokio::time::sleep(Duration::from_millis(50)).await;
    while !caught_up(&lag, &name) {
        assert!(Instant::now() < deadline, "apply took over 10 minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t0.elapsed();
    let _ = stop.send(true);
    for w in workers {
        w.await.unwrap().unwrap();
    }
    tail.await.unwrap().unwrap();
    assert!(journal.shards().unwrap().len() as u32 <= shards);
    took
}

fn main() {
    let secrets = env_u64("FERRY_BENCH_VAULT_SECRETS", 400);
    let versions = env_u64("FERRY_BENCH_VAULT_VERSIONS", 5);
    let shards = env_u64("FERRY_BENCH_VAULT_SHARDS", 4) as u32;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (src, dst) = (
        OpenBao::start().expect("openbao"),
        OpenBao::start().expect("openbao"),
    );
    rt.block_on(async {
        write_direct(&src, "bench", secrets, versions, 8).await;
        // Warm-up of the target server, then the measured rounds, alternated.
        write_direct(&dst, "warm", secrets / 4, versions, u64::from(shards)).await;
        let direct = write_direct(&dst, "direct", secrets, versions, u64::from(shards)).await;
        let apply = ferry(&src, &dst, "ferry-apply", shards, true).await;
        let direct2 = write_direct(&dst, "direct2", secrets, versions, u64::from(shards)).await;
        let e2e = ferry(&src, &dst, "ferry-e2e", shards, false).await;
        let ceiling = direct.min(direct2);
        let per_s = |d: Duration| secrets as f64 / d.as_secs_f64();
        println!("Vault KV v2: {secrets} secrets x {versions} versions, {shards} shards / concurrent writers, OpenBao on loopback");
        println!("  target ceiling (direct check-and-set writes): {:>8.0} secrets/s ({:.0} versions/s; runs {:?} and {:?})", per_s(ceiling), per_s(ceiling) * versions as f64, direct, direct2);
        println!("  ferry apply (journal to target):              {:>8.0} secrets/s  = {:.2}x the ceiling", per_s(apply), ceiling.as_secs_f64() / apply.as_secs_f64());
        println!("  ferry end to end (source read, journal, apply): {:>6.0} secrets/s  = {:.2}x the ceiling", per_s(e2e), ceiling.as_secs_f64() / e2e.as_secs_f64());
    });
}
