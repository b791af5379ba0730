//! MongoDB to MongoDB through `ferry start` and `ferry stop`, with the agent
//! SIGKILLed at random moments over copy and streaming while an
//! application keeps writing, against real SecantusDB servers.

use ferry_testkit::{require, MongoWire};
use ferry_tests::harness::*;
use mongodb::bson::{doc, Document};
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn load(uri: &str, per_coll: u32) {
    let c = mongodb::Client::with_uri_str(uri).await.unwrap();
    let db = c.database("app");
    for coll in ["users", "orders", "events"] {
        let docs: Vec<Document> = (0..per_coll)
            .map(|i| {
                doc! {
                    "_id": i as i64,
                    "name": format!("{coll}-{i}"),
                    "nested": {"a": i, "tags": ["x", "y"], "f": 1.5},
                    "when": mongodb::bson::DateTime::from_millis(1_700_000_000_000 + i as i64),
                }
            })
            .collect();
        db.collection::<Document>(coll)
            .insert_many(docs)
            .await
            .unwrap();
    }
    db.collection::<Document>("users")
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"name": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
}

/// Inserts, replaces, updates and deletes until `stop`, at most 20,000 ops.
fn writer(uri: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                let c = mongodb::Client::with_uri_str(&uri).await.unwrap();
                let db = c.database("app");
                let mut rng = rand::rngs::StdRng::seed_from_u64(7);
                let mut ops = 0u64;
                let deadline = Instant::now() + Duration::from_secs(300);
                while !stop.load(Ordering::Relaxed) && ops < 20_000 && Instant::now() < deadline {
                    let coll = db.collection::<Document>(["orders", "events"][rng.gen_range(0..2)]);
                    let id = rng.gen_range(0..6000i64);
                    let r = match rng.gen_range(0..4) {
                        0 => coll
                            .insert_one(
                                doc! {"_id": 100_000 + ops as i64, "name": "new", "n": ops as i64},
                            )
                            .await
                            .map(drop),
                        1 => coll
                            .replace_one(
                                doc! {"_id": id},
                                doc! {"name": "replaced", "n": ops as i64},
                            )
                            .await
                            .map(drop),
                        2 => coll
                            .update_one(
                                doc! {"_id": id},
                                doc! {"$inc": {"nested.a": 1}, "$set": {"u": true}},
                            )
                            .await
                            .map(drop),
                        _ => coll.delete_one(doc! {"_id": id}).await.map(drop),
                    };
                    r.unwrap();
                    ops += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                ops
            })
    })
}

#[test]
fn mongo_to_mongo_survives_twenty_sigkills_over_copy_and_streaming() {
    let (Some(src), Some(dst)) = (require(MongoWire::start()), require(MongoWire::start())) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(load(&src.uri(), 6000));
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(src.uri(), Arc::clone(&stop));
    let f = Ferry::new();
    let (s, t) = (format!("{}/app", src.uri()), format!("{}/app", dst.uri()));
    let args = ["--shards", "4", "--source.read-only=external"];
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
