//! MongoDB to MongoDB through `ferry start` and `ferry stop` against real
//! mongod 7.0 servers (one-member replica sets, the testkit's): the agent
//! SIGKILLed at random moments over copy and streaming while an
//! application keeps writing; the read-only switch (`setUserWriteBlockMode`)
//! at cutover, lifted by `set-server-mode --mode default` and by a cutover
//! that fails; the oplog-window pre-check. SecantusDB, which has no write
//! blocking, is refused in one sentence.

use ferry_testkit::{require, MongoWire, Mongod};
use ferry_tests::harness::*;
use ferry_tests::mongo::load;
use mongodb::bson::{doc, Document};
use rand::Rng;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `UserWritesBlocked`: what an application's write gets while the source
/// is read-only.
const USER_WRITES_BLOCKED: i32 = 371;

/// The server's code of a failed write.
fn code_of(e: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

/// One application insert into `app.orders`: `Ok` or the server's code.
fn app_insert(rt: &tokio::runtime::Runtime, uri: &str, id: i64) -> Result<(), Option<i32>> {
    rt.block_on(async {
        let c = mongodb::Client::with_uri_str(uri).await.unwrap();
        c.database("app")
            .collection::<Document>("orders")
            .insert_one(doc! {"_id": id, "name": "app"})
            .await
            .map(drop)
            .map_err(|e| code_of(&e))
    })
}

/// The shared workload, paced at one change every 2 ms.
fn writer(uri: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    ferry_tests::mongo::writer_paced(uri, stop, Duration::from_millis(2))
}

#[test]
fn mongo_to_mongo_survives_twenty_sigkills_over_copy_and_streaming() {
    let (Some(src), Some(dst)) = (require(Mongod::start()), require(Mongod::start())) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(load(&src.uri(), 6000));
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(src.uri(), Arc::clone(&stop));
    let f = Ferry::new();
    let (s, t) = (format!("{}/app", src.uri()), format!("{}/app", dst.uri()));
    // The real read-only switch at the end: setUserWriteBlockMode.
    let args = ["--shards", "4"];
    let mut rng = rand::thread_rng();
    let deadline = Instant::now() + Duration::from_secs(600);
    for round in 0..20 {
        assert!(
            Instant::now() < deadline,
            "crash test exceeded its time bound"
        );
        ok(&f.start(&s, &t, &args), &format!("start (round {round})"));
        // Early rounds land in the copy, later ones in streaming.
        let wait = if round < 8 {
            rng.gen_range(200..1500)
        } else {
            rng.gen_range(500..3000)
        };
        std::thread::sleep(Duration::from_millis(wait));
        f.kill_agent();
    }
    stop.store(true, Ordering::Relaxed);
    let ops = w.join().unwrap();
    assert!(ops > 100, "the writer made only {ops} changes");
    ok(&f.start(&s, &t, &args), "final start");
    f.wait_for("caught up", Duration::from_secs(300), |st| {
        all_streaming(st) && max_lag(st) == 0
    });
    let out = f.run(&["stop", "--timeout", "300s"]);
    ok(&out, "stop");
    f.wait_agent_exit(Duration::from_secs(30));
    let out = f.run(&["verify", "--source", &s, "--target", &t]);
    ok(&out, "verify");
    assert!(stdout(&out).contains(": 0 differences"), "{}", stdout(&out));
    // The source stays read-only after the cutover.
    assert_eq!(
        app_insert(&rt, &src.uri(), 900_000),
        Err(Some(USER_WRITES_BLOCKED))
    );
    // The unique index arrived, built after the fence.
    let has_unique = rt.block_on(async {
        let c = mongodb::Client::with_uri_str(dst.uri()).await.unwrap();
        let mut names = Vec::new();
        let mut cur = c
            .database("app")
            .collection::<Document>("users")
            .list_indexes()
            .await
            .unwrap();
        while cur.advance().await.unwrap() {
            let m = cur.deserialize_current().unwrap();
            names.push((m.keys.clone(), m.options.and_then(|o| o.unique)));
        }
        names
    });
    assert!(
        has_unique
            .iter()
            .any(|(k, u)| k == &doc! {"name": 1} && *u == Some(true)),
        "{has_unique:?}"
    );
}

/// SecantusDB has no `setUserWriteBlockMode`: `set-server-mode` and a
/// `start` that would need it say so in one sentence and offer the
/// external mode; nothing is written.
#[test]
fn a_server_without_write_blocking_is_refused_in_one_sentence() {
    let (Some(src), Some(dst)) = (require(MongoWire::start()), require(MongoWire::start())) else {
        return;
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(load(&src.uri(), 10));
    let f = Ferry::new();
    let s = format!("{}/app", src.uri());
    let out = f.run(&["set-server-mode", "--source", &s, "--mode", "readonly"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--source.read-only=external"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    let out = f.start(&s, &format!("{}/app", dst.uri()), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--source.read-only=external"),
        "{}",
        stderr(&out)
    );
    assert!(!f.journal().exists());
}

/// The read-only switch on a real mongod: a cutover that fails (a stray
/// write on the target makes its verification fail) lifts the write block
/// again and the agent keeps syncing; the next cutover succeeds, and from
/// then on an application's writes fail with 371 (during the cutover too:
/// a writer running through it sees only successes, then 371s);
/// `set-server-mode --mode default` lifts the block.
#[test]
fn the_read_only_switch_blocks_applications_and_a_failed_cutover_lifts_it() {
    let (Some(src), Some(dst)) = (require(Mongod::start()), require(Mongod::start())) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(load(&src.uri(), 2000));
    let f = Ferry::new();
    let (s, t) = (format!("{}/app", src.uri()), format!("{}/app", dst.uri()));
    ok(&f.start(&s, &t, &["--shards", "2"]), "start");
    f.wait_for("caught up", Duration::from_secs(120), |st| {
        all_streaming(st) && max_lag(st) == 0
    });

    // A stray write on the target: the cutover's verification must refuse.
    let stray = |insert: bool| {
        rt.block_on(async {
            let c = mongodb::Client::with_uri_str(dst.uri()).await.unwrap();
            let coll = c.database("app").collection::<Document>("events");
            if insert {
                coll.insert_one(doc! {"_id": "stray"}).await.unwrap();
            } else {
                coll.delete_one(doc! {"_id": "stray"}).await.unwrap();
            }
        })
    };
    stray(true);
    let out = f.run(&["stop", "--timeout", "120s"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        f.agent_pid().is_some(),
        "the agent keeps syncing after a failed cutover"
    );
    assert_eq!(
        app_insert(&rt, &src.uri(), 500_000),
        Ok(()),
        "a failed cutover lifts the block"
    );
    stray(false);
    f.wait_for("caught up again", Duration::from_secs(120), |st| {
        all_streaming(st) && max_lag(st) == 0
    });

    // An application writing through the cutover: successes, then only 371s.
    let stop = Arc::new(AtomicBool::new(false));
    let uri = src.uri();
    let w = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(180);
            let mut id = 600_000;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && id < 620_000 {
                seen.push(app_insert(&rt, &uri, id));
                id += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    ok(&f.run(&["stop", "--timeout", "120s"]), "stop");
    f.wait_agent_exit(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen = w.join().unwrap();
    let first_blocked = seen
        .iter()
        .position(|r| r.is_err())
        .expect("writes were blocked");
    assert!(first_blocked > 0, "writes passed before the cutover");
    assert!(
        seen[first_blocked..]
            .iter()
            .all(|r| *r == Err(Some(USER_WRITES_BLOCKED))),
        "after the switch every write fails with 371: {:?}",
        &seen[first_blocked..]
    );
    assert_eq!(
        app_insert(&rt, &src.uri(), 700_000),
        Err(Some(USER_WRITES_BLOCKED))
    );
    let out = f.run(&["verify", "--source", &s, "--target", &t]);
    ok(&out, "verify");
    assert!(stdout(&out).contains(": 0 differences"), "{}", stdout(&out));

    let out = f.run(&["set-server-mode", "--source", &s, "--mode", "default"]);
    ok(&out, "set-server-mode default");
    assert_eq!(app_insert(&rt, &src.uri(), 700_001), Ok(()));
}

/// Continuous verification on MongoDB: once every `_id` range is verified,
/// a document changed on the target behind Ferry's back is reported in
/// `status` within 5 seconds, by namespace and `_id`, and the cutover
/// refuses; repaired at the target, it verifies and opens, comparing inside
/// its window only part of the ranges.
#[test]
fn a_document_changed_on_the_target_is_reported_and_blocks_the_cutover_until_repaired() {
    let (Some(src), Some(dst)) = (require(Mongod::start()), require(Mongod::start())) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(load(&src.uri(), 5000));
    let f = Ferry::new();
    let (s, t) = (format!("{}/app", src.uri()), format!("{}/app", dst.uri()));
    ok(&f.start(&s, &t, &["--shards", "2"]), "start");
    let verified_all = |st: &Value| {
        st["verification"][0]["ranges"].as_u64().unwrap_or(0) > 0
            && st["verification"][0]["verified"] == st["verification"][0]["ranges"]
    };
    let st = f.wait_for("every range verified", Duration::from_secs(120), |st| {
        all_streaming(st) && max_lag(st) == 0 && verified_all(st)
    });
    // Three collections of 5,000: two cuts each, plus each one's first range
    // and the empty one below every namespace.
    assert_eq!(st["verification"][0]["ranges"], 10, "{st}");
    let orders = |uri: String| async move {
        mongodb::Client::with_uri_str(uri)
            .await
            .unwrap()
            .database("app")
            .collection::<Document>("orders")
    };
    rt.block_on(async {
        orders(dst.uri())
            .await
            .update_one(doc! {"_id": 4321i64}, doc! {"$set": {"stray": true}})
            .await
            .unwrap()
    });
    let st = f.wait_for_difference(Instant::now());
    let key = st["verification"][0]["differences"][0]["key_suffix"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(key.contains("app.orders") && key.contains("4321"), "{st}");
    let out = f.run(&["stop", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("differences") && stderr(&out).contains("4321"),
        "{}",
        stderr(&out)
    );
    // Repaired: the source's document written back on the target.
    rt.block_on(async {
        let original = orders(src.uri())
            .await
            .find_one(doc! {"_id": 4321i64})
            .await
            .unwrap()
            .unwrap();
        orders(dst.uri())
            .await
            .replace_one(doc! {"_id": 4321i64}, original)
            .await
            .unwrap();
    });
    f.cut_over_after_repair(&s, &t);
}

/// A source whose oplog is full and spans less than twice the copy's
/// estimated time is refused by the pre-check, before anything is written.
#[test]
fn a_copy_longer_than_the_oplog_window_is_refused() {
    // 1 MB of oplog: full as soon as the load is in.
    let (Some(src), Some(dst)) = (
        require(Mongod::start_with_args(&["--oplogSize", "1"])),
        require(Mongod::start()),
    ) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    // 3 x 40,000 documents: estimated at 25 s, loaded in a few.
    rt.block_on(load(&src.uri(), 40_000));
    let f = Ferry::new();
    let out = f.run(&[
        "start",
        "--check-only",
        "--source",
        &format!("{}/app", src.uri()),
        "--target",
        &format!("{}/app", dst.uri()),
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("oplog spans") && err.contains("replSetResizeOplog"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!f.journal().exists());
}

/// `ferry verify` of MongoDB resumes from its saved cut: the bounds' `_id`s
/// (numbers, strings, ObjectIds) come back with their types, the ranges
/// found equal before the kill are not read again, and a document that
/// differs in a later range is still found.
#[test]
fn an_interrupted_verify_of_documents_resumes_from_its_saved_cut() {
    use mongodb::bson::{oid::ObjectId, Bson};
    let (Some(src), Some(dst)) = (require(Mongod::start()), require(Mongod::start())) else {
        return;
    };
    const N: usize = 9_000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ids: Vec<Bson> = (0..N)
        .map(|i| match i {
            0..3_000 => Bson::Int32(i as i32),
            3_000..6_000 => Bson::String(format!("s{i:05}")),
            _ => Bson::ObjectId(ObjectId::new()),
        })
        .collect();
    let last = ids[N - 1].clone();
    rt.block_on(async {
        for uri in [src.uri(), dst.uri()] {
            let docs: Vec<Document> = ids
                .iter()
                .map(|id| doc! {"_id": id.clone(), "v": format!("{id}"), "pad": "x".repeat(64)})
                .collect();
            mongodb::Client::with_uri_str(uri)
                .await
                .unwrap()
                .database("app")
                .collection::<Document>("mixed")
                .insert_many(docs)
                .await
                .unwrap();
        }
        // In the last range: compared only after the interruption.
        mongodb::Client::with_uri_str(dst.uri())
            .await
            .unwrap()
            .database("app")
            .collection::<Document>("mixed")
            .update_one(doc! {"_id": last.clone()}, doc! {"$set": {"v": "stray"}})
            .await
            .unwrap();
    });
    let f = Ferry::new();
    let progress = f.dir.path().join("verify-progress.json");
    let p = progress.to_str().unwrap();
    let (s, t) = (format!("{}/app", src.uri()), format!("{}/app", dst.uri()));
    // 18,000 documents read at 3,000 a second: about six seconds.
    let saved = f.verify_killed_after((&s, &t), &progress, 3_000, 2);
    // The saved cut holds `_id`s of each type.
    let bounds = saved["model"]["bounds"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let types: std::collections::BTreeSet<String> = bounds
        .iter()
        .filter_map(|b| b[3].as_str())
        .map(|b64| {
            let bytes = mongodb::bson::Binary::from_base64(b64, None).unwrap().bytes;
            let d = Document::from_reader(bytes.as_slice()).unwrap();
            format!("{:?}", d.get("id").unwrap().element_type())
        })
        .collect();
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        ["Int32", "ObjectId", "String"],
        "{saved}"
    );
    let done = saved["done"].as_array().map_or(0, Vec::len);

    let out = f.run(&["verify", "--source", &s, "--target", &t, "--progress", p]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("resumed the comparison"),
        "{}",
        stderr(&out)
    );
    let oid = match &last {
        Bson::ObjectId(o) => o.to_hex(),
        _ => unreachable!(),
    };
    assert!(stdout(&out).contains(&oid), "{}", stdout(&out));
    let compared = compared_source_entries(&out) as usize;
    assert!(
        // Each done range but the empty first one holds at least 1,999.
        compared < N && compared <= N - 1_999 * (done - 1),
        "compared {compared} source documents after {done} ranges were done: {}",
        stdout(&out)
    );
    assert!(!progress.exists(), "a finished verify removes its progress");
}
