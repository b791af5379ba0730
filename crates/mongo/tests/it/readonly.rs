//! The read-only switch: refused on SecantusDB with one sentence offering
//! external mode; exercised on a real mongod where FERRY_TEST_MONGODB_URI
//! points at one.

use crate::common::*;
use ferry_mongo::{readonly, MongoError};
use mongodb::bson::{doc, Document};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secantus_has_no_write_blocking() {
    let Some(src) = mongo() else { return };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_mongod_blocks_user_writes() {
    let Ok(uri) = std::env::var("FERRY_TEST_MONGODB_URI") else {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "not run: real_mongod_blocks_user_writes needs FERRY_TEST_MONGODB_URI (a MongoDB 6.0+ replica set)");
        return;
    };
    let s = store(&uri).await;
    readonly::check_write_block(&s).await.unwrap();
    let coll = client(&uri)
        .await
        .database("ferry_test_readonly")
        .collection::<Document>("a");
    readonly::set_user_write_block(&s, true).await.unwrap();
    let blocked = coll.insert_one(doc! {"x": 1}).await;
    readonly::set_user_write_block(&s, false).await.unwrap();
    // The URI's user may hold bypassWriteBlockingMode (root does); then the
    // insert passes, which is what Ferry's own user needs on a target.
    if blocked.is_ok() {
        eprintln!("the user of FERRY_TEST_MONGODB_URI bypasses write blocking");
    }
    coll.insert_one(doc! {"x": 2}).await.unwrap();
    coll.drop().await.unwrap();
}
