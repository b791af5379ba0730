//! Three agents on one migration: the journal in Kafka (tansu), the
//! coordination in etcd, etcd to etcd under churn. The tailer leader is
//! SIGKILLed (another takes over), an agent owning shards is SIGKILLed (its
//! shards move), a paused leader wakes after its lease expired (it appends
//! nothing), and the cutover runs with agents dead: `verify` is equal every
//! time.
//!
//! The broker runs on memory storage: on tansu's `s3://` storage over moto,
//! the newest batches of a partition were not served for tens of seconds
//! while three agents wrote and read the journal (see the Kafka journal's
//! load test, which runs on it at a lighter load). The journal's survival
//! of a broker restart is tested on durable storage in
//! `crates/journal-kafka/tests/conformance.rs`.

use ferry_testkit::{require, Etcd, Kafka};
use ferry_tests::harness::{connect, load, ok, Ferry, Writer};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::time::{Duration, Instant};

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
    agents: Vec<Ferry>,
}

impl Migration {
    fn start(&self, i: usize) {
        let out = self.agents[i].start_logging(
            &self.source,
            &self.target,
            &[
                "--source.read-only=external",
                "--shards",
                "6",
                "--journal.url",
                &self.journal,
                "--coordinator",
                &self.coordinator,
            ],
            "info",
        );
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
        panic!("{what}: not settled within 60 s; last status: {last:#?}");
    }

    /// Waits until the leader's status shows every shard streaming with no
    /// lag for any target.
    fn wait_caught_up(&self, leader: usize, what: &str) {
        self.agents[leader].wait_for(what, Duration::from_secs(120), |s| {
            ferry_tests::harness::all_streaming(s) && ferry_tests::harness::max_lag(s) == 0
        });
    }

    fn verify(&self, what: &str) {
        ok(
            &self.agents[0].run(&["verify", "--source", &self.source, "--target", &self.target]),
            what,
        );
    }
}

#[test]
fn three_agents_share_a_migration_through_kills_and_a_pause() {
    let (Some(src), Some(tgt), Some(coord), Some(mut kafka)) = (
        require(Etcd::start()),
        require(Etcd::start()),
        require(Etcd::start()),
        require(Kafka::start()),
    ) else {
        return;
    };
    let rt = rt();
    let m = Migration {
        source: src.url("app"),
        target: tgt.url("app"),
        journal: format!("kafka://{}/scale-journal", kafka.bootstrap()),
        coordinator: coord.url("ferry/scale"),
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

    let writer = rt.block_on(async {
        Writer::spawn(
            client,
            "app".into(),
            3_200,
            200_000,
            Duration::from_millis(2),
        )
    });
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
    let leader3 = m.wait_settled(&live, "after an owner's SIGKILL");
    rt.block_on(writer.finish());
    m.wait_caught_up(leader3, "caught up after the kills");
    m.verify("verify after the kills");

    // 3. The leader pauses past its lease; another leads; the paused one
    //    wakes and appends nothing: it stops, and the data stays equal.
    let writer = rt.block_on(async {
        let c = connect(&src.endpoint(), None).await;
        Writer::spawn(c, "app".into(), 3_200, 2_000, Duration::from_millis(3))
    });
    let pid = m.agents[leader3].agent_pid().expect("the leader runs");
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
    m.verify("verify after the deposed leader woke");

    // 4. The cutover with one agent dead (two are, here): the leader
    //    fences, waits for every shard, verifies and opens.
    ok(
        &m.agents[leader4].run(&["stop", "--timeout", "120s"]),
        "stop with agents dead",
    );
    m.verify("verify after the cutover");
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
