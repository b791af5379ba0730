//! Apply throughput with 1, 2 and 3 agents on one migration, one run.
//!
//! etcd to etcd, the journal in Kafka (tansu, memory storage), the agents
//! coordinated on etcd. Each agent's target writes are capped with
//! `--target.rate-limit R`: across machines the targets (or their links) are the
//! bottleneck, so the figure shows what more agents buy when each can
//! write only so fast. Measured: the time from the first agent's start to
//! every shard applied with no lag, for a snapshot of `N` keys; rates are
//! compared with the one-agent run of the same process.
//!
//! On two cores the agents share the CPU with etcd, the broker and each
//! other, so the gain is bounded by the machine, not only by the cap.
//!
//! Run: `cargo build --release -p ferry-cli && cargo bench -p ferry-benches --bench scale`
//! Env: `FERRY_BENCH_SCALE_KEYS` (6000), `FERRY_BENCH_SCALE_RATE` (1000).

use ferry_benches::etcd_run::{connect, count, env_u64, load, FerryRun};
use ferry_testkit::{Etcd, Kafka};
use std::time::{Duration, Instant};

const SHARDS: &str = "6";

fn main() {
    let n = env_u64("FERRY_BENCH_SCALE_KEYS", 6_000);
    let rate = env_u64("FERRY_BENCH_SCALE_RATE", 1_000).to_string();
    let src = Etcd::start().expect("etcd");
    let tgt = Etcd::start().expect("etcd");
    let coord = Etcd::start().expect("etcd");
    let kafka = Kafka::start().expect("tansu");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "bench", n).await;
    });
    let mut results = Vec::new();
    for agents in 1..=3usize {
        let run = format!("run{agents}");
        let journal = format!("kafka://{}/{run}", kafka.bootstrap());
        let coordinator = coord.url(&format!("ferry/{run}"));
        let target = tgt.url(&run);
        let runs: Vec<FerryRun> = (0..agents).map(|_| FerryRun::new()).collect();
        let t0 = Instant::now();
        for r in &runs {
            r.start(
                &src.url("bench"),
                &target,
                &[
                    "--source.read-only=external",
                    "--shards",
                    SHARDS,
                    "--target.rate-limit",
                    &rate,
                    "--journal.url",
                    &journal,
                    "--coordinator",
                    &coordinator,
                ],
            );
        }
        // Done once the target holds every key (the snapshot applied).
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let have = rt.block_on(async {
                let mut c = connect(&tgt.endpoint(), None).await;
                count(&mut c, &run).await
            });
            if have as u64 >= n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{agents} agents: not applied in 600 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let took = t0.elapsed();
        for r in &runs {
            r.abort();
        }
        results.push((agents, took));
    }
    println!("apply throughput, {n} keys of 256 B, {SHARDS} shards, --target.rate-limit {rate}/s per agent:");
    let base = results[0].1.as_secs_f64();
    for (agents, took) in &results {
        println!(
            "  {agents} agent(s): {:>7.0} keys/s ({:.1} s), {:.2}x one agent",
            n as f64 / took.as_secs_f64(),
            took.as_secs_f64(),
            base / took.as_secs_f64()
        );
    }
}
