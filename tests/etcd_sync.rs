//! Live etcd-to-etcd migrations through the `ferry` binary, on two real
//! etcd servers: 100,000 keys, with puts, overwrites, deletes and
//! lease-attached keys written during the snapshot and during streaming;
//! then `ferry stop` and `ferry verify`.

use ferry_testkit::{require, Etcd};
use ferry_tests::harness::*;
use std::time::Duration;

const KEYS: u64 = 100_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn auth_source_migrates_live_and_cuts_over() {
    let (Some(src), Some(tgt)) = (require(Etcd::start()), require(Etcd::start())) else {
        return;
    };
    let rt = rt();
    let f = Ferry::new();
    let source_url = format!("etcd://root:rootpw@{}/app", src.endpoint());
    let target_url = tgt.url("app-copy");
    rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "app", KEYS).await;
        enable_auth(&mut c, "app").await;
    });
    let app = rt.block_on(connect(&src.endpoint(), Some(("app", "apppw"))));
    // Writes during the snapshot and streaming, as the application would.
    let writer = rt.block_on(async {
        Writer::spawn(
            app.clone(),
            "app".into(),
            KEYS + 5000,
            200_000,
            Duration::from_micros(500),
        )
    });
    let out = f.start(&source_url, &target_url, &[]);
    ok(&out, "ferry start");
    assert!(stdout(&out).contains("pre-check"), "{}", stdout(&out));
    assert!(!stdout(&out).contains("rootpw") && !stderr(&out).contains("rootpw"));
    f.wait_for(
        "every shard streaming",
        Duration::from_secs(180),
        all_streaming,
    );
    std::thread::sleep(Duration::from_secs(3));
    let written = rt.block_on(writer.finish());
    assert!(
        written.ops.load(std::sync::atomic::Ordering::Relaxed) > 1000,
        "writer did too little: {written:?}"
    );
    f.wait_for("lag under 100", Duration::from_secs(60), |s| {
        max_lag(s) < 100
    });

    let out = f.run(&["stop", "--timeout", "120s"]);
    ok(&out, "ferry stop");
    assert!(stdout(&out).contains("cutover proof"), "{}", stdout(&out));
    f.wait_agent_exit(Duration::from_secs(30));

    let out = f.run(&["verify", "--source", &source_url, "--target", &target_url]);
    ok(&out, "ferry verify after cutover");

    // The source refuses the application's writes now ...
    let mut app2 = rt.block_on(connect(&src.endpoint(), Some(("app", "apppw"))));
    let refused = rt.block_on(app2.put("app/after-cutover", "x", None));
    assert!(
        refused.is_err(),
        "the source accepted a write after the cutover"
    );
    // ... and set-server-mode gives them back.
    let out = f.run(&[
        "set-server-mode",
        "--source",
        &source_url,
        "--mode",
        "default",
    ]);
    ok(&out, "set-server-mode default");
    let mut app3 = rt.block_on(connect(&src.endpoint(), Some(("app", "apppw"))));
    rt.block_on(app3.put("app/after-restore", "x", None))
        .expect("write after restore");
}

#[test]
fn external_read_only_migrates_and_refuses_writes_after_the_fence() {
    let (Some(src), Some(tgt)) = (require(Etcd::start()), require(Etcd::start())) else {
        return;
    };
    let rt = rt();
    let f = Ferry::new();
    let source_url = src.url("svc");
    let target_url = tgt.url("svc");
    let client = rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "svc", 20_000).await;
        c
    });
    let writer = rt.block_on(async {
        Writer::spawn(
            client.clone(),
            "svc".into(),
            25_000,
            100_000,
            Duration::from_micros(300),
        )
    });
    ok(
        &f.start(&source_url, &target_url, &["--source.read-only=external"]),
        "ferry start",
    );
    f.wait_for(
        "every shard streaming",
        Duration::from_secs(120),
        all_streaming,
    );
    std::thread::sleep(Duration::from_secs(2));

    // Writers still running: the cutover must see a write after the fence
    // and refuse to open the target.
    let out = f.run(&["stop", "--timeout", "60s"]);
    assert!(
        !out.status.success(),
        "cutover succeeded despite writes: {}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("written after the fence"),
        "{}",
        stderr(&out)
    );
    let s = f
        .status()
        .expect("the agent keeps syncing after a failed cutover");
    assert_eq!(s["state"], "syncing", "{s:#}");
    assert_eq!(s["cutover"]["phase"], "failed", "{s:#}");
    rt.block_on(writer.finish());

    // The operator stops the writers and asks again: now it cuts over.
    f.wait_for("lag zero", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    ok(&f.run(&["stop", "--timeout", "60s"]), "ferry stop");
    f.wait_agent_exit(Duration::from_secs(30));
    ok(
        &f.run(&["verify", "--source", &source_url, "--target", &target_url]),
        "ferry verify",
    );
}

/// `ferry verify` compares by the continuous verifier's ranges and resumes:
/// killed after some ranges, run again it reads only the ranges not yet
/// found equal, still finds a difference in one of those, and removes its
/// progress once it finishes; a damaged progress file is refused with the
/// way out.
#[test]
fn an_interrupted_verify_resumes_from_the_ranges_it_had_compared() {
    let Some(etcd) = require(Etcd::start()) else {
        return;
    };
    const N: u64 = 20_000;
    let rt = rt();
    rt.block_on(async {
        let mut c = connect(&etcd.endpoint(), None).await;
        load(&mut c, "a", N).await;
        load(&mut c, "b", N).await;
        // In the last range: compared only after the interruption.
        c.put("b/key-019990", "stray", None).await.unwrap();
    });
    let f = Ferry::new();
    let progress = f.dir.path().join("verify-progress.json");
    let (s, t) = (etcd.url("a"), etcd.url("b"));
    let p = progress.to_str().unwrap();
    // 40,000 reads at 8,000 a second: about five seconds.
    let saved = f.verify_killed_after((&s, &t), &progress, 8_000, 3);
    let done = saved["done"].as_array().map_or(0, Vec::len);
    assert!(progress.exists(), "a killed verify keeps its progress");

    let out = f.run(&["verify", "--source", &s, "--target", &t, "--progress", p]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("resumed the comparison") && stderr(&out).contains("--restart"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("key-019990"), "{}", stdout(&out));
    // The ranges found equal before were not read again.
    let compared = compared_source_entries(&out);
    assert!(
        compared <= N - 2_000 * (done as u64 - 1),
        "compared {compared} source keys after {done} ranges were done: {}",
        stdout(&out)
    );
    assert!(!progress.exists(), "a finished verify removes its progress");

    // Damaged progress: refused, one sentence naming the way out.
    std::fs::write(&progress, b"{ not json").unwrap();
    let out = f.run(&["verify", "--source", &s, "--target", &t, "--progress", p]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--restart"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));

    // Repaired, and compared from scratch: equal, every key read.
    rt.block_on(async {
        let mut c = connect(&etcd.endpoint(), None).await;
        c.put("b/key-019990", vec![b'v'; 256], None).await.unwrap();
    });
    let out = f.run(&[
        "verify",
        "--source",
        &s,
        "--target",
        &t,
        "--progress",
        p,
        "--restart",
    ]);
    ok(&out, "verify after the repair");
    assert!(
        stdout(&out).contains(&format!("compared {N} source entries")),
        "{}",
        stdout(&out)
    );
}
