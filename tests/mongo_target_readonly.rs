//! A MongoDB target stays read-only while Ferry fills it, as operators of
//! cloud migrations expect: from `start` to the cutover an application's
//! write to the target fails with 371 (setUserWriteBlockMode) while Ferry's
//! sink, as a user holding `bypassWriteBlockingMode`, still writes; the
//! cutover opens it. Without authentication nobody can bypass the block, so
//! the pre-check says the target is not write-protected and the sync runs
//! as before. Real mongod 7.0 on both sides.

use ferry_testkit::{require, Mongod};
use ferry_tests::harness::*;
use mongodb::bson::{doc, Document};
use std::time::Duration;

/// `UserWritesBlocked`.
const USER_WRITES_BLOCKED: i32 = 371;

fn code_of(e: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

fn app_insert(rt: &tokio::runtime::Runtime, uri: &str, id: &str) -> Result<(), Option<i32>> {
    rt.block_on(async {
        let c = mongodb::Client::with_uri_str(uri).await.unwrap();
        c.database("app")
            .collection::<Document>("orders")
            .insert_one(doc! {"_id": id})
            .await
            .map(drop)
            .map_err(|e| code_of(&e))
    })
}

#[test]
fn an_authenticated_target_is_write_blocked_from_start_to_the_cutover() {
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("keyfile");
    std::fs::write(&keyfile, "ferryTestKeyfile0123456789abcdefghij\n").unwrap();
    let win = format!("Z:{}", keyfile.display()).replace('/', "\\");
    let (Some(src), Some(dst)) = (
        require(Mongod::start()),
        require(Mongod::start_with_args(&["--auth", "--keyFile", &win])),
    ) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = dst.port();
    let as_user = |u: &str| format!("mongodb://{u}:pw@127.0.0.1:{port}/app?authSource=admin");
    rt.block_on(async {
        // The localhost exception lets the first user be created.
        let open = mongodb::Client::with_uri_str(dst.uri()).await.unwrap();
        open.database("admin")
            .run_command(doc! {"createUser": "ferry", "pwd": "pw", "roles": ["root"]})
            .await
            .unwrap();
        let root = mongodb::Client::with_uri_str(as_user("ferry")).await.unwrap();
        root.database("admin")
            .run_command(doc! {"createUser": "app", "pwd": "pw", "roles": [{"role": "readWriteAnyDatabase", "db": "admin"}]})
            .await
            .unwrap();
        let s = mongodb::Client::with_uri_str(src.uri()).await.unwrap();
        let docs: Vec<Document> = (0..500).map(|i| doc! {"_id": i, "n": i}).collect();
        s.database("app")
            .collection::<Document>("orders")
            .insert_many(docs)
            .await
            .unwrap();
    });
    let f = Ferry::new();
    let (s, t) = (format!("{}/app", src.uri()), as_user("ferry"));
    let out = f.start(&s, &t, &[]);
    ok(&out, "start");
    assert!(
        stdout(&out).contains("read-only during the sync"),
        "{}",
        stdout(&out)
    );
    f.wait_for("caught up", Duration::from_secs(120), |st| {
        all_streaming(st) && max_lag(st) == 0
    });
    // An application's write to the target fails during the sync.
    assert_eq!(
        app_insert(&rt, &as_user("app"), "during"),
        Err(Some(USER_WRITES_BLOCKED))
    );
    let out = f.run(&["stop", "--timeout", "120s"]);
    ok(&out, "stop");
    f.wait_agent_exit(Duration::from_secs(30));
    // The cutover opened the target, and it holds the source's documents.
    app_insert(&rt, &as_user("app"), "after").expect("the cutover opened the target");
    let n = rt.block_on(async {
        let c = mongodb::Client::with_uri_str(as_user("ferry"))
            .await
            .unwrap();
        c.database("app")
            .collection::<Document>("orders")
            .count_documents(doc! {})
            .await
            .unwrap()
    });
    assert_eq!(n, 501);
}

#[test]
fn a_target_without_authentication_is_said_to_be_unprotected() {
    let (Some(src), Some(dst)) = (require(Mongod::start()), require(Mongod::start())) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = mongodb::Client::with_uri_str(src.uri()).await.unwrap();
        s.database("app")
            .collection::<Document>("orders")
            .insert_one(doc! {"_id": "x"})
            .await
            .unwrap();
    });
    let f = Ferry::new();
    let out = f.start(
        &format!("{}/app", src.uri()),
        &format!("{}/app", dst.uri()),
        &["--check-only"],
    );
    ok(&out, "check-only");
    let text = stdout(&out);
    assert!(
        text.contains("not write-protected during the sync: without authentication"),
        "{text}"
    );
    // Nothing was sent, and the target takes writes.
    app_insert(&rt, &dst.uri(), "free").expect("an unprotected target takes writes");
}
