//! What only a real mongod's oplog can show: a resume token that fell off
//! the oplog while the pipeline was down (a re-snapshot, then equal); a
//! multi-document source transaction of thousands of writes, spread over
//! several oplog entries, arriving whole; a unique index the target's data
//! violates failing in one sentence at cutover.

use crate::common::*;
use ferry_core::Op;
use ferry_journal::{Journal, ReadBudget};
use ferry_mongo::{pack, verify, Catalog, CollectionSpec, MongoSink, Namespace, SinkOptions};
use ferry_testkit::{require, Mongod};
use mongodb::bson::{doc, Document};
use std::time::{Duration, Instant};

/// How many `SnapshotBegin` markers the journal holds over `span`.
fn snapshots(p: &Pipeline) -> usize {
    p.span
        .iter()
        .map(|s| {
            p.journal
                .read(
                    s,
                    1,
                    ReadBudget {
                        max_events: 10_000_000,
                        max_bytes: 1 << 31,
                    },
                )
                .unwrap()
                .iter()
                .filter(|e| matches!(e.op, Op::SnapshotBegin { .. }))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// The oldest entry's time in `local.oplog.rs`, packed as a position.
async fn oplog_start(c: &mongodb::Client) -> u64 {
    let first = c
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! {"$natural": 1})
        .await
        .unwrap()
        .expect("an oplog entry");
    pack(first.get_timestamp("ts").unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_off_the_oplog_takes_a_new_snapshot() {
    // A 1 MB oplog, and checkpoints every second: mongod truncates its
    // oplog only up to the last checkpoint (60 s apart by default).
    let (Some(src), Some(dst)) = (
        require(Mongod::start_with_args(&[
            "--oplogSize",
            "1",
            "--syncdelay",
            "1",
        ])),
        mongo(),
    ) else {
        return;
    };
    let c = client(&src.uri()).await;
    let coll = c.database("app").collection::<Document>("a");
    fill(&coll, 0, 2_000).await;
    let source = store(&format!("{}/?include=app.*", src.uri())).await;
    let target = store(&dst.uri()).await;
    let p = Pipeline::start(source.clone(), target.clone(), 2).await;
    p.drain(&source, Duration::from_secs(120)).await;
    assert_eq!(snapshots(&p), 1);
    let (r, dir) = p.stop_keeping_journal().await;
    r.unwrap();
    let stopped_at = source.head_position().await.unwrap();

    // While the pipeline is down: deletes and updates it must not miss, then
    // enough writes to push its resume point off the 1 MB oplog.
    coll.delete_many(doc! {"_id": {"$lt": 100}}).await.unwrap();
    coll.update_many(doc! {"_id": {"$gte": 1000}}, doc! {"$set": {"later": true}})
        .await
        .unwrap();
    let filler = c.database("app").collection::<Document>("filler");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut round = 0i64;
    while oplog_start(&c).await <= stopped_at {
        assert!(
            Instant::now() < deadline && round < 200,
            "the oplog was not truncated past the resume point"
        );
        let docs = (0..500).map(|i| doc! {"_id": round * 500 + i, "pad": "x".repeat(2000)});
        filler.insert_many(docs).await.unwrap();
        filler.delete_many(doc! {}).await.unwrap();
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("history: resume point off the oplog after {round} rounds");

    let p = Pipeline::resume(source.clone(), target.clone(), 2, dir).await;
    p.drain(&source, Duration::from_secs(180)).await;
    assert_eq!(snapshots(&p), 2, "a second snapshot was taken");
    let namespaces = vec![Namespace::new("app", "a"), Namespace::new("app", "filler")];
    let report = verify::compare(&source, &target, &namespaces)
        .await
        .unwrap();
    assert!(report.is_equal(), "{report:#?}");
    assert_eq!(report.source_documents(), 1_900);
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_thousands_of_writes_arrives_whole() {
    let (Some(src), Some(dst)) = (mongo(), mongo()) else {
        return;
    };
    let c = client(&src.uri()).await;
    let a = c.database("app").collection::<Document>("a");
    let b = c.database("app").collection::<Document>("b");
    fill(&a, 0, 3_000).await;
    fill(&b, 0, 10).await;
    let source = store(&src.uri()).await;
    let target = store(&dst.uri()).await;
    let p = Pipeline::start(source.clone(), target.clone(), 4).await;
    p.drain(&source, Duration::from_secs(120)).await;

    // 5,000 inserts of 4 KB (20 MB: more than one 16 MB oplog entry), 2,000
    // updates and 1,000 deletes over two collections, one transaction.
    let mut s = c.start_session().await.unwrap();
    s.start_transaction().await.unwrap();
    for chunk in 0..10i64 {
        let docs = (0..500).map(|i| {
            let id = 100_000 + chunk * 500 + i;
            doc! {"_id": id, "pad": "t".repeat(4096), "n": id}
        });
        b.insert_many(docs).session(&mut s).await.unwrap();
    }
    for id in 0..2_000i64 {
        a.update_one(doc! {"_id": id}, doc! {"$set": {"in_txn": true}})
            .session(&mut s)
            .await
            .unwrap();
    }
    a.delete_many(doc! {"_id": {"$gte": 2_000}})
        .session(&mut s)
        .await
        .unwrap();
    s.commit_transaction().await.unwrap();
    let entries = c
        .database("local")
        .collection::<Document>("oplog.rs")
        .count_documents(doc! {"op": "c", "o.applyOps": {"$exists": true}})
        .await
        .unwrap();
    assert!(
        entries > 1,
        "the transaction spans {entries} applyOps entries"
    );

    p.drain(&source, Duration::from_secs(180)).await;
    let tc = client(&dst.uri()).await;
    let ta = tc.database("app").collection::<Document>("a");
    let tb = tc.database("app").collection::<Document>("b");
    assert_eq!(tb.count_documents(doc! {}).await.unwrap(), 5_010);
    assert_eq!(ta.count_documents(doc! {}).await.unwrap(), 2_000);
    assert_eq!(
        ta.count_documents(doc! {"in_txn": true}).await.unwrap(),
        2_000
    );
    let report = verify::compare(
        &source,
        &target,
        &[Namespace::new("app", "a"), Namespace::new("app", "b")],
    )
    .await
    .unwrap();
    assert!(report.is_equal(), "{report:#?}");
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_index_the_target_violates_fails_in_one_sentence() {
    let Some(dst) = mongo() else { return };
    let ns = Namespace::new("app", "users");
    let catalog = Catalog {
        collections: vec![CollectionSpec {
            namespace: ns.clone(),
            options: doc! {},
            indexes: vec![doc! {"key": {"email": 1}, "name": "email_1", "unique": true}],
        }],
    };
    let target = store(&dst.uri()).await;
    let sink = MongoSink::new(
        target,
        "target".into(),
        SinkOptions {
            catalog: Some(catalog),
            ..SinkOptions::default()
        },
    );
    ferry_replay::Sink::startup(&sink).await.unwrap();
    let coll = client(&dst.uri())
        .await
        .database("app")
        .collection::<Document>("users");
    coll.insert_many([
        doc! {"_id": 1, "email": "a@x"},
        doc! {"_id": 2, "email": "a@x"},
    ])
    .await
    .unwrap();
    let e = sink.create_deferred_indexes().await.expect_err("refused");
    let text = e.to_string();
    assert!(
        text.contains("unique index") && text.contains("app.users") && !text.contains('\n'),
        "{text}"
    );
    let names = coll.list_index_names().await.unwrap();
    assert!(!names.contains(&"email_1".to_string()), "{names:?}");
}

/// A drop and a rename of selected collections during streaming: the
/// tailer takes a new snapshot; the target ends with the source's documents
/// (the renamed collection under its new name) and none left in the
/// collections gone at the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_and_a_rename_at_the_source_take_a_new_snapshot() {
    let (Some(src), Some(dst)) = (mongo(), mongo()) else {
        return;
    };
    let c = client(&src.uri()).await;
    let db = c.database("app");
    for name in ["keep", "gone", "old"] {
        fill(&db.collection::<Document>(name), 0, 1_000).await;
    }
    let source = store(&format!("{}/?include=app.*", src.uri())).await;
    let target = store(&dst.uri()).await;
    let p = Pipeline::start(source.clone(), target.clone(), 2).await;
    p.drain(&source, Duration::from_secs(120)).await;
    assert_eq!(snapshots(&p), 1);

    db.collection::<Document>("gone").drop().await.unwrap();
    c.database("admin")
        .run_command(doc! {"renameCollection": "app.old", "to": "app.new"})
        .await
        .unwrap();
    db.collection::<Document>("keep")
        .delete_many(doc! {"_id": {"$lt": 10}})
        .await
        .unwrap();
    until("a new snapshot", Duration::from_secs(60), || async {
        snapshots(&p) >= 2
    })
    .await;
    p.drain(&source, Duration::from_secs(120)).await;

    let namespaces = vec![Namespace::new("app", "keep"), Namespace::new("app", "new")];
    let report = verify::compare(&source, &target, &namespaces)
        .await
        .unwrap();
    assert!(report.is_equal(), "{report:#?}");
    assert_eq!(report.source_documents(), 1_990);
    let tdb = client(&dst.uri()).await.database("app");
    for gone in ["gone", "old"] {
        assert_eq!(
            tdb.collection::<Document>(gone)
                .count_documents(doc! {})
                .await
                .unwrap(),
            0,
            "app.{gone} on the target"
        );
    }
    p.stop().await.unwrap();
}

/// The source mongod SIGKILLed in the middle of the copy and restarted
/// (journal recovery) a few seconds later: the tailer retries, copies
/// again, and the stores end equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_killed_mid_copy_is_ridden_out() {
    let (Some(mut src), Some(dst)) = (mongo(), mongo()) else {
        return;
    };
    let c = client(&src.uri()).await;
    for k in 0..4 {
        fill(
            &c.database("app").collection::<Document>(&format!("c{k}")),
            0,
            50_000,
        )
        .await;
    }
    drop(c);
    let source = store(&format!("{}/?include=app.*", src.uri())).await;
    let target = store(&dst.uri()).await;
    let p = Pipeline::start(source.clone(), target.clone(), 4).await;
    until("the copy under way", Duration::from_secs(60), || async {
        p.span
            .iter()
            .any(|s| p.journal.bounds(s).unwrap().is_some_and(|b| b.last > 1_000))
    })
    .await;
    let copying = p
        .lag
        .snapshot()
        .shards
        .iter()
        .any(|s| s.phase != ferry_lag::Phase::Streaming);
    src.kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    src.start_again().unwrap();
    eprintln!(
        "history: source killed {} the copy, back in {:?}",
        if copying { "during" } else { "after" },
        src.started_in()
    );
    p.drain(&source, Duration::from_secs(300)).await;
    let namespaces: Vec<Namespace> = (0..4)
        .map(|k| Namespace::new("app", format!("c{k}")))
        .collect();
    let report = verify::compare(&source, &target, &namespaces)
        .await
        .unwrap();
    assert!(report.is_equal(), "{report:#?}");
    assert_eq!(report.source_documents(), 200_000);
    p.stop().await.unwrap();
}
