//! The sink against a real primary: many shards writing at once into
//! collections that do not exist yet (no catalog). The sink creates each
//! once, outside its transactions, before the writes; without that, mongod
//! under wine logs "Conflicted registering namespace" and crashes or hangs.

use crate::common::*;
use ferry_core::ShardId;
use ferry_mongo::{MongoSink, Namespace, SinkOptions};
use ferry_replay::Sink;
use mongodb::bson::{doc, Document};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_shards_into_new_collections_create_each_once() {
    let Some(m) = mongo() else { return };
    let sink = Arc::new(MongoSink::new(
        store(&m.uri()).await,
        "target".into(),
        SinkOptions::default(),
    ));
    sink.startup().await.unwrap();
    let collections = 12;
    let mut tasks = Vec::new();
    for shard in 0..8u32 {
        let sink = Arc::clone(&sink);
        tasks.push(tokio::spawn(async move {
            // Every shard writes into every collection, in transactions.
            let mut seq = 0u64;
            for round in 0..3i64 {
                let mut events = Vec::new();
                for k in 0..collections {
                    let ns = Namespace::new("fresh", format!("c{k}"));
                    let base = i64::from(shard) * 1_000 + round * 100;
                    events.extend(puts(&ns, base..base + 20, 1));
                }
                for e in &mut events {
                    seq += 1;
                    e.shard = ShardId(shard);
                    e.seq = seq;
                }
                assert_eq!(sink.apply(ShardId(shard), &events).await.unwrap(), seq);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let db = client(&m.uri()).await.database("fresh");
    for k in 0..collections {
        let n = db
            .collection::<Document>(&format!("c{k}"))
            .count_documents(doc! {})
            .await
            .unwrap();
        assert_eq!(n, 8 * 3 * 20, "fresh.c{k}");
    }
    assert_eq!(m.admin_command("ping"), Ok(true), "mongod survived");
}
