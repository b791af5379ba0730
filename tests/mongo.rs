//! The MongoDB workload the end-to-end tests share: three collections
//! (`app.users` with a unique index, `app.orders`, `app.events`) and an
//! application that keeps changing two of them.

use mongodb::bson::{doc, Document};
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Creates the collections (one at a time: mongod under wine crashes when
/// several connections create one collection at once) and fills them.
pub async fn load(uri: &str, per_coll: u32) {
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

/// New documents' `_id`s, fresh across every writer of a test process.
static NEXT_ID: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(100_000);

/// Inserts, replaces, updates and deletes in `app.orders` and `app.events`
/// until `stop`, one change every `pause`, at most 20,000 changes and 300 s;
/// returns how many it made.
pub fn writer_paced(
    uri: String,
    stop: Arc<AtomicBool>,
    pause: Duration,
) -> std::thread::JoinHandle<u64> {
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
                                doc! {"_id": NEXT_ID.fetch_add(1, Ordering::Relaxed), "name": "new", "n": ops as i64},
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
                    tokio::time::sleep(pause).await;
                }
                ops
            })
    })
}
