//! Three agents on one migration: the journal in Kafka (tansu), the
//! coordination in etcd.
//!
//! - etcd to etcd under churn on durable broker storage (`s3://` on moto):
//!   the tailer leader SIGKILLed (another takes over), an agent owning
//!   shards SIGKILLed (its shards move), a broker restart, a paused leader that wakes after
//!   its lease expired (it appends nothing), then `ferry stop` sent to an
//!   agent that does not lead, with one agent dead: the leader fences, every
//!   shard's owner records it in etcd, the leader opens.
//! - MongoDB to MongoDB (real mongod 7.0) on durable broker storage (`s3://`
//!   on moto): a broker restart, the tailer leader SIGKILLed while it owns
//!   shards, and the cutover sent to a non-leader with that agent dead; the
//!   source is write-blocked after it.
//!
//! `verify` is equal every time. A test's mid-run checks wait for
//! convergence (`verify` repeated until equal, bounded), since an agent that
//! just took shards over replays from the target's checkpoint.

use ferry_testkit::{require, Etcd, Kafka};
use ferry_tests::harness::{connect, load, ok, stdout, Ferry, Writer};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The application's pace in the etcd test: 40 changes a second. Each of
/// the broker's partitions must stay well under about 1000 produced
/// batches: tansu on `s3://` (moto) serves nothing past that (see
/// `Kafka::start_durable`), and the journal's own partition takes a commit
/// per append.
const WRITE_PAUSE: Duration = Duration::from_millis(25);

/// How long `verify` may take to come out equal after a fault. On `s3://`
/// storage (moto, one Python process) a journal append took 1 to 7 s after
/// a takeover here, and the target was equal 12 to 57 s after a broker
/// restart: the bound leaves room for a slower run, never for a loss.
const CONVERGE: Duration = Duration::from_secs(150);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

struct Migration {
    source: String,
    target: String,
    journal: String,
    coordinator: String,
    /// Besides the journal and coordinator flags.
    args: Vec<&'static str>,
    /// The one difference `verify` may report before the cutover: an index
    /// the target gets only after the fence (MongoDB's unique indexes).
    deferred: Option<&'static str>,
    agents: Vec<Ferry>,
}

impl Migration {
    fn start(&self, i: usize) {
        let mut args = self.args.clone();
        args.extend([
            "--shards",
            "6",
            "--journal.url",
            &self.journal,
            "--coordinator",
            &self.coordinator,
        ]);
        let filter = std::env::var("FERRY_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into());
        let out = self.agents[i].start_logging(&self.source, &self.target, &args, &filter);
        ok(&out, &format!("start agent {i}"));
    }

    /// The first status one of `live` gives (a paused agent is not asked:
    /// it would not answer).
    fn status(&self, live: &[usize]) -> Option<Value> {
        live.iter().find_map(|i| self.agents[*i].status())
    }

    /// Which of `agents` has the API `api`.
    fn index_of(&self, api: &str) -> Option<usize> {
        self.agents
            .iter()
            .position(|a| api.ends_with(&format!(":{}", a.port)))
    }

    /// Waits until the live agents are `live`, one of them leads, and every
    /// shard is owned by a live agent; returns the leader's index.
    fn wait_settled(&self, live: &[usize], what: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(s) = self.status(live) {
                let scale = &s["scale"];
                let agents: Vec<usize> = scale["agents"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| self.index_of(a["api"].as_str()?))
                    .collect();
                let owned: usize = scale["agents"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| a["shards"].as_array().map_or(0, Vec::len))
                    .sum();
                let leader = scale["leader"].as_str().and_then(|l| {
                    scale["agents"]
                        .as_array()?
                        .iter()
                        .find(|a| a["id"] == l)
                        .and_then(|a| self.index_of(a["api"].as_str()?))
                });
                let mut sorted = agents.clone();
                sorted.sort();
                if sorted == live && owned == 6 {
                    if let Some(l) = leader.filter(|l| live.contains(l)) {
                        // The leader itself says it leads (it took the journal over).
                        if self.agents[l]
                            .status()
                            .is_some_and(|st| st["scale"]["epoch"].as_u64().unwrap_or(0) > 0)
                        {
                            return l;
                        }
                    }
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.show_logs();
        panic!("{what}: not settled within 60 s; last status: {last:#?}");
    }

    /// Waits until the leader's status shows every shard streaming with no
    /// lag for any target.
    fn wait_caught_up(&self, leader: usize, what: &str) {
        self.agents[leader].wait_for(what, Duration::from_secs(120), |s| {
            ferry_tests::harness::all_streaming(s) && ferry_tests::harness::max_lag(s) == 0
        });
    }

    /// Every agent's log, for a failure's report.
    fn show_logs(&self) {
        for (i, a) in self.agents.iter().enumerate() {
            eprintln!("--- agent {i} log ---\n{}", a.agent_log());
        }
    }

    /// `verify` before the cutover: equal, but for the deferred index.
    fn verify(&self, what: &str) {
        let out =
            self.agents[0].run(&["verify", "--source", &self.source, "--target", &self.target]);
        if !self.only_deferred(&out) {
            ok(&out, what);
        }
    }

    /// `verify` after the cutover: equal, indexes and all.
    fn verify_final(&self, what: &str) {
        ok(
            &self.agents[0].run(&["verify", "--source", &self.source, "--target", &self.target]),
            what,
        );
    }

    /// The one difference `verify` gave is the deferred index.
    fn only_deferred(&self, out: &std::process::Output) -> bool {
        let text = stdout(out);
        self.deferred.is_some_and(|d| {
            !out.status.success() && text.contains(": 1 differences") && text.contains(d)
        })
    }

    /// `verify` until it is equal, within `within` (an agent that took
    /// shards over replays them from the target's checkpoint first).
    fn verify_converges(&self, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let out =
                self.agents[0].run(&["verify", "--source", &self.source, "--target", &self.target]);
            if out.status.success() || self.only_deferred(&out) {
                return;
            }
            if Instant::now() >= deadline {
                self.show_logs();
                ok(&out, what);
                return;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// `ferry stop` sent to `via`, an agent that does not lead: it goes to
    /// the leader through etcd, `via` follows the leader's cutover to its
    /// end, and every live agent exits. Returns the proof's read-only window.
    fn stop_through(&self, via: usize, leader: usize, live: &[usize]) -> u64 {
        assert_ne!(
            via, leader,
            "the stop is sent to an agent that does not lead"
        );
        let out = self.agents[via].run(&["stop", "--timeout", "180s"]);
        ok(&out, &format!("stop through agent {via}"));
        let text = stdout(&out);
        assert!(
            text.contains("does not lead the migration"),
            "agent {via} said it sends the stop on: {text}"
        );
        assert!(
            text.contains("read-only window") && text.contains(", 0 differences"),
            "agent {via} followed the leader's cutover to its proof: {text}"
        );
        let proof = self.agents[leader]
            .status()
            .and_then(|s| s.get("proof").cloned())
            .filter(|p| !p.is_null());
        for i in live {
            self.agents[*i].wait_agent_exit(Duration::from_secs(30));
            let log = self.agents[*i].agent_log();
            if let Ok(dir) = std::env::var("FERRY_TEST_KEEP_LOGS") {
                let _ = std::fs::write(format!("{dir}/agent-{i}.log"), &log);
            }
            assert!(
                log.contains("cutover done; the agent exits"),
                "agent {i} ended with the leader's cutover:\n{log}"
            );
        }
        let window = proof
            .as_ref()
            .and_then(|p| p["read_only_window_ms"].as_u64());
        let phases = proof.as_ref().map(|p| p["window_phases_ms"].clone());
        eprintln!("cutover through agent {via}: read-only window {window:?} ms, phases {phases:?}");
        window.unwrap_or(0)
    }
}

#[test]
fn three_agents_share_a_migration_through_kills_and_a_pause() {
    let (Some(src), Some(tgt), Some(coord), Some(mut kafka)) = (
        require(Etcd::start()),
        require(Etcd::start()),
        require(Etcd::start()),
        require(Kafka::start_durable()),
    ) else {
        return;
    };
    let rt = rt();
    let m = Migration {
        source: src.url("app"),
        target: tgt.url("app"),
        journal: format!("kafka://{}/scale-journal", kafka.bootstrap()),
        coordinator: coord.url("ferry/scale"),
        args: vec!["--source.read-only=external"],
        deferred: None,
        agents: vec![Ferry::new(), Ferry::new(), Ferry::new()],
    };
    let client = rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "app", 3_000).await;
        c
    });
    for i in 0..3 {
        m.start(i);
    }
    let leader = m.wait_settled(&[0, 1, 2], "three agents");
    m.wait_caught_up(leader, "the snapshot applied by three agents");
    m.verify("verify after the snapshot");

    let writer =
        rt.block_on(async { Writer::spawn(client, "app".into(), 3_200, 1_500, WRITE_PAUSE) });
    // 1. The tailer leader dies: another takes over within the lease TTL.
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = Instant::now();
    m.agents[leader].kill_agent();
    let live: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let leader2 = m.wait_settled(&live, "after the leader's SIGKILL");
    eprintln!(
        "agent {leader2} leads {:?} after the leader's SIGKILL",
        killed_at.elapsed()
    );
    // 2. The dead agent comes back; then a non-leader owning shards dies.
    m.start(leader);
    m.wait_settled(&[0, 1, 2], "the agent back");
    let owner = (0..3).find(|i| *i != leader2).unwrap();
    m.agents[owner].kill_agent();
    let live: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    m.wait_settled(&live, "after an owner's SIGKILL");
    // The broker restarts while the application writes (its data on S3
    // survives it).
    let restarted = Instant::now();
    kafka
        .restart()
        .expect("the broker restarts on its S3 storage");
    std::thread::sleep(Duration::from_secs(2));
    rt.block_on(writer.finish());
    let leader3 = m.wait_settled(&live, "after the broker restart");
    m.wait_caught_up(leader3, "caught up after the kills and the restart");
    m.verify_converges("verify after the kills and the restart", CONVERGE);
    eprintln!("equal {:?} after the broker restart", restarted.elapsed());

    // 3. The leader pauses past its lease; another leads; the paused one
    //    wakes and appends nothing: it stops, and the data stays equal.
    let writer = rt.block_on(async {
        let c = connect(&src.endpoint(), None).await;
        Writer::spawn(c, "app".into(), 3_200, 400, WRITE_PAUSE)
    });
    let Some(pid) = m.agents[leader3].agent_pid() else {
        m.show_logs();
        panic!("agent {leader3}, the leader, no longer runs");
    };
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let live: Vec<usize> = (0..3).filter(|i| *i != owner && *i != leader3).collect();
    let leader4 = m.wait_settled_without(&live, leader3);
    kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap();
    m.agents[leader3].wait_agent_exit(Duration::from_secs(30));
    let log = m.agents[leader3].agent_log();
    assert!(
        log.contains("lost its coordinator lease")
            || log.contains("may no longer write the journal"),
        "the deposed leader stopped for its lost lease or its fenced journal:\n{log}"
    );
    rt.block_on(writer.finish());
    m.wait_caught_up(leader4, "caught up after the pause");
    // The new leader's tailer may still be reading the source's latest
    // changes (it resumed from the journal's checkpoint): converge.
    m.verify_converges("verify after the deposed leader woke", CONVERGE);

    // 4. One agent comes back (the other stays dead); `ferry stop` is sent
    //    to it, not to the leader: the leader fences, every shard's owner
    //    records it applied through the fence, the leader verifies and opens.
    m.start(owner);
    let mut live = vec![leader4, owner];
    live.sort();
    let leader5 = m.wait_settled(&live, "one agent back");
    let via = live.iter().copied().find(|i| *i != leader5).unwrap();
    m.stop_through(via, leader5, &live);
    m.verify_final("verify after the cutover");
    kafka.stop();
}

impl Migration {
    /// [`Migration::wait_settled`] while `paused` is stopped (it cannot
    /// answer `status`, and its lease runs out).
    fn wait_settled_without(&self, live: &[usize], paused: usize) -> usize {
        let started = Instant::now();
        let l = self.wait_settled(live, "with the leader paused");
        assert_ne!(l, paused);
        eprintln!("agent {l} leads {:?} after the pause", started.elapsed());
        l
    }
}

#[test]
fn three_agents_move_mongodb_through_a_broker_restart_on_durable_storage() {
    use ferry_testkit::Mongod;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (Some(src), Some(dst), Some(coord), Some(mut kafka)) = (
        require(Mongod::start()),
        require(Mongod::start()),
        require(Etcd::start()),
        require(Kafka::start_durable()),
    ) else {
        return;
    };
    let rt = rt();
    rt.block_on(ferry_tests::mongo::load(&src.uri(), 300));
    let m = Migration {
        source: format!("{}/app", src.uri()),
        target: format!("{}/app", dst.uri()),
        journal: format!("kafka://{}/scale-mongo", kafka.bootstrap()),
        coordinator: coord.url("ferry/mongo"),
        // The real read-only switch at the cutover: setUserWriteBlockMode.
        args: vec![],
        // The unique index on app.users is built after the fence.
        deferred: Some("app.users: index name_1: missing on the target"),
        agents: vec![Ferry::new(), Ferry::new(), Ferry::new()],
    };
    // One after the other: each agent creates the target's collections
    // before it answers, and mongod under wine stalls when several
    // connections create one collection at once.
    for i in 0..3 {
        m.start(i);
    }
    let leader = m.wait_settled(&[0, 1, 2], "three agents");
    m.wait_caught_up(leader, "the copy applied by three agents");
    m.verify("verify after the copy");

    let stop = Arc::new(AtomicBool::new(false));
    let writer =
        ferry_tests::mongo::writer_paced(src.uri(), Arc::clone(&stop), Duration::from_millis(20));
    // 1. The broker restarts under load (its data on S3 survives it).
    std::thread::sleep(Duration::from_secs(3));
    let restarted = Instant::now();
    kafka
        .restart()
        .expect("the broker restarts on its S3 storage");
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let ops = writer.join().unwrap();
    assert!(ops > 50, "the application made only {ops} changes");
    m.wait_caught_up(leader, "caught up after the broker restart");
    m.verify_converges("verify after the broker restart", CONVERGE);
    eprintln!("equal {:?} after the broker restart", restarted.elapsed());

    // 2. The leader, which also owns shards, is SIGKILLed while the
    //    application writes: another agent leads and takes its shards.
    let stop = Arc::new(AtomicBool::new(false));
    let writer =
        ferry_tests::mongo::writer_paced(src.uri(), Arc::clone(&stop), Duration::from_millis(20));
    // Whichever agent leads now (the broker restart may have moved it).
    let leader = m.wait_settled(&[0, 1, 2], "after the broker restart");
    std::thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    m.agents[leader].kill_agent();
    let live: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let leader2 = m.wait_settled(&live, "after the leader's SIGKILL");
    eprintln!(
        "agent {leader2} leads {:?} after the leader's SIGKILL",
        killed.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    m.wait_caught_up(leader2, "caught up after the leader's SIGKILL");
    m.verify_converges("verify after the leader's SIGKILL", CONVERGE);
    eprintln!("equal {:?} after the leader's SIGKILL", killed.elapsed());

    // 3. The cutover, sent to the agent that does not lead, with the third
    //    agent dead; the source is write-blocked after it.
    let via = live.iter().copied().find(|i| *i != leader2).unwrap();
    m.stop_through(via, leader2, &live);
    m.verify_final("verify after the cutover");
    let blocked = rt.block_on(async {
        let c = mongodb::Client::with_uri_str(src.uri()).await.unwrap();
        c.database("app")
            .collection::<mongodb::bson::Document>("orders")
            .insert_one(mongodb::bson::doc! {"_id": "written after the cutover"})
            .await
    });
    assert!(
        blocked.is_err(),
        "the source refuses an application's write after the cutover"
    );
    kafka.stop();
}
