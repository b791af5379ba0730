//! Bad input: each refused with one clear sentence, and nothing written to
//! the target.

use crate::common::*;
use ferry_core::StoreUrl;
use ferry_mongo::{MongoError, MongoStore};
use mongodb::bson::{doc, Document};

/// One sentence: no line break, ends with a clause saying what to do.
fn one_sentence(e: &MongoError) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "{s}");
    assert!(s.contains(';'), "names the problem and the fix: {s}");
    s
}

/// Only the server's own databases exist (nothing of Ferry, nothing copied).
async fn untouched(uri: &str) {
    let names = client(uri).await.list_database_names().await.unwrap();
    let user: Vec<_> = names
        .iter()
        .filter(|n| !["admin", "local", "config"].contains(&n.as_str()))
        .collect();
    assert!(user.is_empty(), "target was written to: {user:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_uri() {
    let Some(dst) = mongo() else { return };
    let url = StoreUrl::parse(&format!("{}/?journal=maybe&w=1", dst.uri())).unwrap();
    let e = MongoStore::connect(&url).await.err().expect("refused");
    assert!(matches!(e, MongoError::MalformedUri { .. }), "{e:?}");
    let s = one_sentence(&e);
    assert!(s.contains("malformed"), "{s}");
    untouched(&dst.uri()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_failure() {
    // A user is made on an open server, which then restarts with --auth.
    let Some(open) = Secantus::start(&["--sync-on-commit"]) else {
        return;
    };
    client(&open.uri())
        .await
        .database("admin")
        .run_command(doc! {"createUser": "ferry", "pwd": "right-password", "roles": ["root"]})
        .await
        .unwrap();
    let Some(auth) = Secantus::start_in(open.into_dir(), &["--auth"]) else {
        return;
    };
    let url = StoreUrl::parse(&format!(
        "mongodb://ferry:wrong-password@127.0.0.1:{}/?authSource=admin",
        auth.port
    ))
    .unwrap();
    let e = MongoStore::connect(&url).await.err().expect("refused");
    assert!(matches!(e, MongoError::AuthFailed { .. }), "{e:?}");
    let s = one_sentence(&e);
    assert!(!s.contains("wrong-password"), "{s}");
    // The right password works, and nothing was written meanwhile.
    let ok = format!(
        "mongodb://ferry:right-password@127.0.0.1:{}/?authSource=admin",
        auth.port
    );
    let _ = store(&ok).await;
    untouched(&ok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_change_streams() {
    let Some(standalone) = Secantus::start(&["--standalone"]) else {
        return;
    };
    let Some(dst) = mongo() else { return };
    client(&standalone.uri())
        .await
        .database("app")
        .collection::<Document>("a")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let source = store(&format!("{}/?directConnection=true", standalone.uri())).await;
    let target = store(&dst.uri()).await;
    let e = ferry_mongo::precheck(&source, &target, false)
        .await
        .expect_err("refused");
    assert!(matches!(e, MongoError::NoChangeStreams { .. }), "{e:?}");
    assert!(one_sentence(&e).contains("replica set"));
    untouched(&dst.uri()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_pattern_matching_nothing() {
    let (Some(src), Some(dst)) = (mongo(), mongo()) else {
        return;
    };
    client(&src.uri())
        .await
        .database("app")
        .collection::<Document>("a")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let source = store(&format!("{}/?include=nope.*&exclude=app.a", src.uri())).await;
    let e = ferry_mongo::precheck(&source, &store(&dst.uri()).await, false)
        .await
        .expect_err("refused");
    assert!(matches!(e, MongoError::NothingSelected { .. }), "{e:?}");
    let s = one_sentence(&e);
    assert!(s.contains("nope.*") && s.contains("app.a"), "{s}");
    assert!(
        s.contains("the server holds database app"),
        "names where the data is: {s}"
    );
    untouched(&dst.uri()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_empty_target_without_force() {
    let (Some(src), Some(dst)) = (mongo(), mongo()) else {
        return;
    };
    client(&src.uri())
        .await
        .database("app")
        .collection::<Document>("a")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let existing = client(&dst.uri())
        .await
        .database("app")
        .collection::<Document>("a");
    existing
        .insert_one(doc! {"_id": 1, "old": true})
        .await
        .unwrap();
    let (source, target) = (store(&src.uri()).await, store(&dst.uri()).await);
    let e = ferry_mongo::precheck(&source, &target, false)
        .await
        .expect_err("refused");
    assert!(
        matches!(e, MongoError::TargetNotEmpty { documents: 1, .. }),
        "{e:?}"
    );
    assert!(one_sentence(&e).contains("--force"));
    // Nothing written: the old document as it was, no Ferry database.
    assert_eq!(
        existing.find_one(doc! {}).await.unwrap(),
        Some(doc! {"_id": 1, "old": true})
    );
    let names = client(&dst.uri())
        .await
        .list_database_names()
        .await
        .unwrap();
    assert!(!names.contains(&ferry_mongo::META_DB.to_string()));
    // With force the pre-check passes.
    ferry_mongo::precheck(&source, &target, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_over_the_target_limit() {
    let (Some(src), Some(dst)) = (mongo(), mongo()) else {
        return;
    };
    // Both servers here accept 16 MiB; the target's limit is the one
    // `hello` reports, so the check is shown against a target limit of
    // 1 MiB with a 2 MiB source document.
    let coll = client(&src.uri())
        .await
        .database("app")
        .collection::<Document>("a");
    coll.insert_one(doc! {"_id": "small"}).await.unwrap();
    coll.insert_one(doc! {"_id": "huge", "blob": "x".repeat(2 << 20)})
        .await
        .unwrap();
    let (source, target) = (store(&src.uri()).await, store(&dst.uri()).await);
    assert_eq!(target.info().max_document_bytes, 16 << 20);
    let ns = source.selected_namespaces().await.unwrap();
    let e = source
        .check_document_sizes(&ns, target.name(), 1 << 20)
        .await
        .expect_err("refused");
    let MongoError::DocumentTooLarge { id, bytes, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(id.contains("huge") && *bytes > 2 << 20, "{e:?}");
    assert!(one_sentence(&e).contains("app.a"));
    untouched(&dst.uri()).await;
}
