//! Fault tests of the etcd pipeline on real servers: SIGKILL of the agent
//! at random moments, source compaction past the journal, a target outage.
//! Each ends with `ferry stop` and `ferry verify` finding source and target equal.

use ferry_testkit::{require, Etcd};
use ferry_tests::harness::*;
use rand::Rng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Applied sequence per (shard, target) from a status.
fn applied(s: &Value) -> BTreeMap<(u64, String), u64> {
    let mut out = BTreeMap::new();
    for sh in s["lag"]["shards"].as_array().into_iter().flatten() {
        for (t, p) in sh["targets"].as_object().into_iter().flatten() {
            out.insert(
                (sh["shard"].as_u64().unwrap(), t.clone()),
                p["applied_seq"].as_u64().unwrap(),
            );
        }
    }
    out
}

/// Applied checkpoints from the journal itself (the agent is down).
fn journal_applied(f: &Ferry) -> BTreeMap<(u64, String), u64> {
    let out = f.run(&["journal", "inspect", path_str(&f.journal()), "--json"]);
    ok(&out, "journal inspect");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut m = BTreeMap::new();
    for sh in v["shards"].as_array().into_iter().flatten() {
        for (t, seq) in sh["applied"].as_object().into_iter().flatten() {
            m.insert(
                (sh["shard"].as_u64().unwrap(), t.clone()),
                seq.as_u64().unwrap(),
            );
        }
    }
    m
}

fn assert_not_backward(
    before: &BTreeMap<(u64, String), u64>,
    after: &BTreeMap<(u64, String), u64>,
    when: &str,
) {
    for (k, b) in before {
        let a = after.get(k).copied().unwrap_or(0);
        assert!(
            a >= *b,
            "{when}: applied checkpoint of {k:?} moved backward from {b} to {a}"
        );
    }
}

#[test]
fn sigkill_at_random_moments_resumes_and_converges() {
    let (Some(src), Some(tgt)) = (require(Etcd::start()), require(Etcd::start())) else {
        return;
    };
    let rt = rt();
    let f = Ferry::new();
    let (source_url, target_url) = (src.url("crash"), tgt.url("crash"));
    let client = rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "crash", 30_000).await;
        c
    });
    let writer = rt.block_on(async {
        Writer::spawn(
            client,
            "crash".into(),
            32_000,
            400_000,
            Duration::from_micros(800),
        )
    });
    let mut rng = rand::thread_rng();
    let mut seen: BTreeMap<(u64, String), u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    const KILLS: usize = 20;
    for round in 0..KILLS {
        assert!(
            Instant::now() < deadline,
            "crash test exceeded its time bound"
        );
        let out = f.start(
            &source_url,
            &target_url,
            &["--source.read-only=external", "--shards", "4"],
        );
        ok(&out, &format!("start (round {round})"));
        // Kill early (snapshot) in the first rounds, later in streaming.
        let wait = if round < 6 {
            rng.gen_range(100..1500)
        } else {
            rng.gen_range(300..3000)
        };
        std::thread::sleep(Duration::from_millis(wait));
        if let Some(s) = f.status() {
            let now = applied(&s);
            assert_not_backward(&seen, &now, &format!("round {round} (live)"));
            seen = now;
        }
        f.kill_agent();
        let j = journal_applied(&f);
        assert_not_backward(&seen, &j, &format!("round {round} (after SIGKILL)"));
        seen.extend(j);
    }
    rt.block_on(writer.finish());
    ok(
        &f.start(
            &source_url,
            &target_url,
            &["--source.read-only=external", "--shards", "4"],
        ),
        "final start",
    );
    f.wait_for("caught up", Duration::from_secs(180), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    // One more kill during the cutover's drain, then the real cutover.
    let stopper = f.cmd(&["stop", "--timeout", "60s"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
    f.kill_agent();
    let _ = stopper.wait_with_output();
    ok(
        &f.start(
            &source_url,
            &target_url,
            &["--source.read-only=external", "--shards", "4"],
        ),
        "start after cutover kill",
    );
    f.wait_for("caught up again", Duration::from_secs(120), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    f.cut_over_and_verify(&source_url, &target_url, "120s", "verify after crashes");
}

#[test]
fn compaction_past_the_journal_resnapshots_and_converges() {
    let (Some(src), Some(tgt)) = (require(Etcd::start()), require(Etcd::start())) else {
        return;
    };
    let rt = rt();
    let f = Ferry::new();
    let (source_url, target_url) = (src.url("cmp"), tgt.url("cmp"));
    let mut client = rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "cmp", 5_000).await;
        c
    });
    ok(
        &f.start(&source_url, &target_url, &["--source.read-only=external"]),
        "start",
    );
    f.wait_for("caught up", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    ok(&f.run(&["stop", "--abort"]), "stop --abort");
    f.wait_agent_exit(Duration::from_secs(30));
    // While the agent is down: deletes, overwrites, new keys, then compaction.
    rt.block_on(async {
        for i in 0..1000u64 {
            client
                .delete(format!("cmp/key-{i:06}"), None)
                .await
                .unwrap();
        }
        for i in 1000..2000u64 {
            client
                .put(format!("cmp/key-{i:06}"), "changed", None)
                .await
                .unwrap();
        }
        for i in 0..500u64 {
            client
                .put(format!("cmp/new-{i}"), "new", None)
                .await
                .unwrap();
        }
        let rev = client
            .get("cmp", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        client.compact(rev, None).await.unwrap();
    });
    // With re-snapshot off: refused by the pre-checks, in one sentence.
    let out = f.start(
        &source_url,
        &target_url,
        &["--source.read-only=external", "--no-resnapshot"],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stderr(&out).contains("compacted"), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    // Default: re-snapshot, with one warning, and converge.
    let out = f.start(&source_url, &target_url, &["--source.read-only=external"]);
    ok(&out, "start with re-snapshot");
    assert!(
        stdout(&out).contains("compacted") && stdout(&out).contains("new snapshot"),
        "{}",
        stdout(&out)
    );
    // The status may read "streaming, lag 0" from the journal before the
    // tailer has met the compaction, so wait for the tailer's own word first.
    f.wait_log("taking a new snapshot", Duration::from_secs(60));
    f.wait_for(
        "caught up after re-snapshot",
        Duration::from_secs(120),
        |s| all_streaming(s) && max_lag(s) == 0,
    );
    f.cut_over_and_verify(&source_url, &target_url, "60s", "verify after compaction");
}

#[test]
fn target_outage_of_twenty_seconds_is_ridden_out() {
    let (Some(src), Some(mut tgt)) = (require(Etcd::start()), require(Etcd::start())) else {
        return;
    };
    let rt = rt();
    let f = Ferry::new();
    let (source_url, target_url) = (src.url("out"), tgt.url("out"));
    let client = rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "out", 5_000).await;
        c
    });
    ok(
        &f.start(&source_url, &target_url, &["--source.read-only=external"]),
        "start",
    );
    f.wait_for("caught up", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    let writer = rt.block_on(async {
        Writer::spawn(
            client,
            "out".into(),
            6_000,
            1_000_000,
            Duration::from_millis(2),
        )
    });
    tgt.stop();
    std::thread::sleep(Duration::from_secs(20));
    let during = f.status().expect("agent answers during the outage");
    assert!(
        max_lag(&during) > 100,
        "lag did not grow during the outage: {}",
        max_lag(&during)
    );
    tgt.restart().expect("restart target");
    std::thread::sleep(Duration::from_secs(2));
    rt.block_on(writer.finish());
    f.wait_for("lag back near zero", Duration::from_secs(120), |s| {
        max_lag(s) == 0
    });
    f.cut_over_and_verify(&source_url, &target_url, "60s", "verify after outage");
}

#[test]
fn a_stray_write_on_the_target_is_reported_and_blocks_the_cutover_until_repaired() {
    let (Some(src), Some(tgt)) = (require(Etcd::start()), require(Etcd::start())) else {
        return;
    };
    let rt = rt();
    let f = Ferry::new();
    let (source_url, target_url) = (src.url("cv"), tgt.url("cv"));
    rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "cv", 5_000).await;
    });
    ok(
        &f.start(&source_url, &target_url, &["--source.read-only=external"]),
        "start",
    );
    let verified_all = |s: &Value| {
        s["verification"][0]["ranges"].as_u64().unwrap_or(0) > 0
            && s["verification"][0]["verified"] == s["verification"][0]["ranges"]
    };
    f.wait_for("every range verified", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0 && verified_all(s)
    });
    // Behind Ferry's back: a write on the target that no event explains.
    let mut target = rt.block_on(connect(&tgt.endpoint(), None));
    rt.block_on(target.put("cv/key-000100", "stray", None))
        .unwrap();
    let s = f.wait_for_difference(Instant::now());
    assert!(
        s["verification"][0]["differences"][0]["key_suffix"] == "/key-000100",
        "the key is named: {s}"
    );
    let out = f.run(&["stop", "--timeout", "30s"]);
    assert!(
        !out.status.success(),
        "the cutover opened over a difference"
    );
    assert!(
        stderr(&out).contains("differences") && stderr(&out).contains("/key-000100"),
        "{}",
        stderr(&out)
    );
    // Repaired at the target: the next cutover verifies and opens, having
    // compared inside its window only the range that differed.
    let value = rt
        .block_on(async {
            let mut c = connect(&src.endpoint(), None).await;
            c.get("cv/key-000100", None).await
        })
        .unwrap()
        .kvs()[0]
        .value()
        .to_vec();
    rt.block_on(target.put("cv/key-000100", value, None))
        .unwrap();
    f.cut_over_after_repair(&source_url, &target_url);
}

#[test]
fn a_hung_target_shows_its_error_in_status_and_recovers() {
    let (Some(src), Some(tgt)) = (require(Etcd::start()), require(Etcd::start())) else {
        return;
    };
    let rt = rt();
    let f = Ferry::new();
    let (source_url, target_url) = (src.url("hang"), tgt.url("hang"));
    let client = rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "hang", 2_000).await;
        c
    });
    ok(
        &f.start(
            &source_url,
            &target_url,
            &["--source.read-only=external", "--target.timeout", "3s"],
        ),
        "start",
    );
    f.wait_for("caught up", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    let writer = rt.block_on(async {
        Writer::spawn(
            client,
            "hang".into(),
            2_500,
            1_000_000,
            Duration::from_millis(2),
        )
    });
    // The target hangs: its process stops answering, connections stay open.
    let pid = nix::unistd::Pid::from_raw(tgt.pid().expect("target runs") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let hung = Instant::now();
    let error_of = |s: &Value| -> Option<String> {
        s["lag"]["shards"]
            .as_array()?
            .iter()
            .filter_map(|sh| sh["targets"][&target_url]["error"].as_str())
            .next()
            .map(str::to_string)
    };
    let s = f.wait_for("the target's error", Duration::from_secs(30), |s| {
        error_of(s).is_some()
    });
    let shown = hung.elapsed();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let error = error_of(&s).unwrap();
    assert!(
        error.contains(&target_url) && error.contains("retrying"),
        "the error names the target and says it is retried: {error}"
    );
    eprintln!("a hung target showed in status after {shown:?}: {error}");
    rt.block_on(writer.finish());
    f.wait_for("recovered", Duration::from_secs(120), |s| {
        max_lag(s) == 0 && error_of(s).is_none()
    });
    f.cut_over_and_verify(&source_url, &target_url, "60s", "verify after the hang");
}
