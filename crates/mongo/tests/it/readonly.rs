//! The read-only switch, `setUserWriteBlockMode`, on a real mongod: user
//! writes fail with code 371 while it is on, and what the
//! `bypassWriteBlockingMode` privilege changes (with authentication only).
//! SecantusDB has no such command: refused in one sentence offering
//! external mode.

use crate::common::*;
use ferry_core::ShardId;
use ferry_mongo::{readonly, MongoError, MongoSink, Namespace, SinkOptions};
use ferry_replay::Sink;
use ferry_testkit::{require, Mongod};
use mongodb::bson::{doc, Document};

/// `UserWritesBlocked`.
const USER_WRITES_BLOCKED: i32 = 371;

fn code_of(e: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m.write_errors.as_ref()?.first().map(|w| w.code),
        _ => None,
    }
}

fn assert_blocked<T: std::fmt::Debug>(r: Result<T, mongodb::error::Error>, who: &str) {
    let e = r.expect_err(&format!(
        "{who}: a write passed while user writes are blocked"
    ));
    assert_eq!(code_of(&e), Some(USER_WRITES_BLOCKED), "{who}: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secantus_has_no_write_blocking() {
    let Some(src) = secantus() else { return };
    let s = store(&src.uri()).await;
    let e = readonly::check_write_block(&s)
        .await
        .expect_err("unsupported");
    assert!(
        matches!(e, MongoError::WriteBlockUnsupported { .. }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("--source.read-only=external") && !text.contains('\n'),
        "{text}"
    );
    let e = readonly::set_user_write_block(&s, true)
        .await
        .expect_err("unsupported");
    assert!(
        matches!(e, MongoError::WriteBlockUnsupported { .. }),
        "{e:?}"
    );
}

/// Without authentication nobody holds `bypassWriteBlockingMode`: the
/// application's writes and Ferry's own (a sink's transaction with its
/// checkpoint) fail alike, and lifting the block lets both through again.
/// The block survives a restart of the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongod_blocks_every_write_without_auth_and_lifts_it() {
    let Some(mut m) = mongo() else { return };
    let s = store(&m.uri()).await;
    readonly::check_write_block(&s).await.unwrap();
    let app = client(&m.uri()).await;
    let coll = app.database("app").collection::<Document>("a");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    let sink = MongoSink::new(s.clone(), "target".into(), SinkOptions::default());
    sink.startup().await.unwrap();
    let ns = Namespace::new("app", "a");
    assert_eq!(
        sink.apply(ShardId(0), &puts(&ns, 1..3, 1)).await.unwrap(),
        2
    );

    readonly::set_user_write_block(&s, true).await.unwrap();
    assert_blocked(coll.insert_one(doc! {"_id": 10}).await, "application");
    assert_blocked(
        app.database("app")
            .collection::<Document>("new")
            .insert_one(doc! {"_id": 1})
            .await,
        "application, new collection",
    );
    let e = sink
        .apply(ShardId(0), &puts(&ns, 3..5, 3))
        .await
        .expect_err("the sink wrote while blocked");
    assert!(e.message.contains("371"), "{e:?}");
    // Reads go on.
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 3);

    // The block is persistent: a restart keeps it.
    drop((app, coll, sink, s));
    m.restart().unwrap();
    let s = store(&m.uri()).await;
    let coll = client(&m.uri())
        .await
        .database("app")
        .collection::<Document>("a");
    assert_blocked(coll.insert_one(doc! {"_id": 11}).await, "after a restart");
    readonly::set_user_write_block(&s, false).await.unwrap();
    coll.insert_one(doc! {"_id": 12}).await.unwrap();
    let sink = MongoSink::new(s.clone(), "target".into(), SinkOptions::default());
    assert_eq!(
        sink.apply(ShardId(0), &puts(&ns, 3..5, 3)).await.unwrap(),
        4
    );
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 6);
}

/// With authentication, a user holding `bypassWriteBlockingMode` (root, or
/// any role granting that cluster action) writes while user writes are
/// blocked, transactions included, so Ferry's sink can fill a blocked
/// target; an application's user (readWriteAnyDatabase, even with
/// clusterAdmin) gets 371, and cannot lift the block itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bypass_privilege_lets_only_its_holder_write_with_auth() {
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("keyfile");
    std::fs::write(&keyfile, "ferryTestKeyfile0123456789abcdefghij\n").unwrap();
    let win = format!("Z:{}", keyfile.display()).replace('/', "\\");
    let Some(m) = require(Mongod::start_with_args(&["--auth", "--keyFile", &win])) else {
        return;
    };
    let port = m.port();
    let uri = |user: &str| format!("mongodb://{user}:pw@127.0.0.1:{port}/?authSource=admin");
    // The localhost exception lets the first user be created.
    let open = client(&m.uri()).await;
    open.database("admin")
        .run_command(doc! {"createUser": "root", "pwd": "pw", "roles": ["root"]})
        .await
        .unwrap();
    let root = client(&uri("root")).await;
    let admin = root.database("admin");
    admin
        .run_command(
            doc! {"createRole": "ferryBypass", "roles": [], "privileges": [
            {"resource": {"cluster": true}, "actions": ["bypassWriteBlockingMode"]}]},
        )
        .await
        .unwrap();
    for (user, roles) in [
        (
            "app",
            vec![doc! {"role": "readWriteAnyDatabase", "db": "admin"}],
        ),
        (
            "operator",
            vec![
                doc! {"role": "readWriteAnyDatabase", "db": "admin"},
                doc! {"role": "clusterAdmin", "db": "admin"},
            ],
        ),
        (
            "ferry",
            vec![
                doc! {"role": "readWriteAnyDatabase", "db": "admin"},
                doc! {"role": "ferryBypass", "db": "admin"},
            ],
        ),
    ] {
        admin
            .run_command(doc! {"createUser": user, "pwd": "pw", "roles": roles})
            .await
            .unwrap();
    }
    root.database("app").create_collection("a").await.unwrap();
    let s = store(&uri("root")).await;
    readonly::set_user_write_block(&s, true).await.unwrap();

    for user in ["app", "operator"] {
        let c = client(&uri(user)).await;
        let coll = c.database("app").collection::<Document>("a");
        assert_blocked(coll.insert_one(doc! {"user": user}).await, user);
        let e = c
            .database("admin")
            .run_command(doc! {"setUserWriteBlockMode": 1, "global": false})
            .await
            .expect_err("lifted the block");
        // 13 Unauthorized (operator: clusterAdmin lacks the action too).
        assert_eq!(code_of(&e), Some(13), "{user}: {e}");
    }
    for user in ["root", "ferry"] {
        let c = client(&uri(user)).await;
        c.database("app")
            .collection::<Document>("a")
            .insert_one(doc! {"user": user})
            .await
            .unwrap_or_else(|e| panic!("{user} holds the bypass: {e}"));
    }
    // Ferry's sink as the bypassing user: data and checkpoint in one
    // transaction, into a collection it has to create, while blocked.
    let sink = MongoSink::new(
        store(&uri("ferry")).await,
        "target".into(),
        SinkOptions::default(),
    );
    sink.startup().await.unwrap();
    let ns = Namespace::new("app", "b");
    assert_eq!(
        sink.apply(ShardId(0), &puts(&ns, 0..500, 1)).await.unwrap(),
        500
    );
    let b = root.database("app").collection::<Document>("b");
    assert_eq!(b.count_documents(doc! {}).await.unwrap(), 500);
    readonly::set_user_write_block(&s, false).await.unwrap();
    client(&uri("app"))
        .await
        .database("app")
        .collection::<Document>("a")
        .insert_one(doc! {"user": "app"})
        .await
        .unwrap();
}
