//! The target mongod SIGKILLed and kept down for 20 seconds during
//! streaming, then restarted (journal recovery): the workers retry with
//! backoff, catch up, and the stores end equal. A commit the target
//! acknowledged must survive the crash (the sink reports a checkpoint that
//! went back as fatal, see `sink/mod.rs`): mongod's default write concern
//! (majority) waits for its journal.

use crate::common::*;
use ferry_mongo::{verify, Namespace};
use mongodb::bson::{doc, Document};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_outage_of_20_s_is_ridden_out() {
    let (Some(src), Some(mut dst)) = (mongo(), mongo()) else {
        return;
    };
    let c = client(&src.uri()).await;
    let coll = c.database("app").collection::<Document>("a");
    fill(&coll, 0, 5_000).await;
    let source = store(&src.uri()).await;
    let target = store(&dst.uri()).await;
    let p = Pipeline::start(source.clone(), target.clone(), 2).await;
    p.drain(&source, Duration::from_secs(120)).await;

    dst.kill();
    let down = Instant::now();
    let mut i = 0i64;
    // Streaming goes on for 20 s with the target down, bounded in count.
    while down.elapsed() < Duration::from_secs(20) && i < 20_000 {
        coll.insert_one(rich_doc(10_000 + i)).await.unwrap();
        if i % 3 == 0 {
            coll.delete_one(doc! {"_id": i}).await.unwrap();
        }
        if i % 5 == 0 {
            coll.update_one(doc! {"_id": i + 1}, doc! {"$inc": {"n": 1}})
                .await
                .unwrap();
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let journaled_while_down = !p.caught_up();
    dst.start_again().unwrap();
    p.drain(&source, Duration::from_secs(180)).await;
    assert!(
        journaled_while_down,
        "the outage should have left work to catch up"
    );

    p.sink.create_deferred_indexes().await.unwrap();
    let report = verify::compare(&source, &target, &[Namespace::new("app", "a")])
        .await
        .unwrap();
    assert!(report.is_equal(), "{report:#?}");
    assert_eq!(
        report.source_documents(),
        coll.count_documents(doc! {}).await.unwrap()
    );
    let t = Instant::now();
    p.stop().await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stopped in {:?}",
        t.elapsed()
    );
}
