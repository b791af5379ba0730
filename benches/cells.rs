//! Cells mapping benchmark: Bolt values mapped into the documents Cells
//! reads (the Go-codec rule over prost-reflect descriptors, see
//! `ferry_cells::gobson`) against the floor of any mapping, run in the same
//! process on the same values: parsing the JSON (`serde_json`) and writing
//! it as BSON generically (`bson::to_document`), or decoding the ChangeLog
//! with prost's generated type (no BSON at all).
//!
//! Run: `cargo bench -p ferry-benches --bench cells`
//! Env: `FERRY_BENCH_CELLS_VALUES` (200000).

use ferry_cells::gobson::pb;
use ferry_cells::{map, MapOptions, Service};
use prost::Message as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn time(mut f: impl FnMut()) -> Duration {
    // Best of three: the figure least disturbed by the other core's work.
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .expect("three runs")
}

fn main() {
    let n: usize = std::env::var("FERRY_BENCH_CELLS_VALUES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let opts = MapOptions::default();
    let inbox = vec![b"USER".to_vec(), b"alice".to_vec(), b"inbox".to_vec()];
    let activities: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            serde_json::to_vec(&serde_json::json!({
                "jsonLdContext": "https://www.w3.org/ns/activitystreams",
                "type": 3, "id": format!("/activity-{i}"),
                "actor": {"type": 23, "id": "alice", "name": "Alice"},
                "object": {"type": 19, "id": format!("node-{i}"), "name": "file.txt"},
                "updated": {"seconds": 1_714_557_600 + i as i64, "nanos": 250},
            }))
            .expect("json")
        })
        .collect();
    let node = vec![b"versions".to_vec(), b"node-1".to_vec()];
    let versions: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            pb::ChangeLog {
                uuid: format!("version-{i}"),
                description: "Updated".into(),
                m_time: 1_714_557_600 + i as i64,
                size: 4096,
                data: format!("blob-{i}").into_bytes(),
                owner_uuid: "alice".into(),
                event: Some(pb::NodeChangeEvent {
                    r#type: 3,
                    ..Default::default()
                }),
                location: Some(pb::Node {
                    uuid: "node-1".into(),
                    path: "pydiods1/folder/file.txt".into(),
                    r#type: 1,
                    ..Default::default()
                }),
            }
            .encode_to_vec()
        })
        .collect();
    let keys: Vec<[u8; 8]> = (0..n as u64).map(|i| (i + 1).to_be_bytes()).collect();

    let floor_json = time(|| {
        for v in &activities {
            let j: serde_json::Value = serde_json::from_slice(v).expect("json");
            black_box(mongodb::bson::to_document(&j).expect("bson"));
        }
    });
    let mapped_json = time(|| {
        for (v, k) in activities.iter().zip(&keys) {
            black_box(map(Service::Activity, &opts, &inbox, k, Some(v)).expect("maps"));
        }
    });
    let floor_pb = time(|| {
        for v in &versions {
            black_box(pb::ChangeLog::decode(v.as_slice()).expect("decodes"));
        }
    });
    let mapped_pb = time(|| {
        for (v, k) in versions.iter().zip(&keys) {
            black_box(map(Service::Versions, &opts, &node, k, Some(v)).expect("maps"));
        }
    });
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("cells mapping, {n} values each, best of 3");
    println!(
        "  activities: mapped {:>9.0}/s; JSON parse + generic BSON {:>9.0}/s; ratio {:.2}x",
        rate(mapped_json),
        rate(floor_json),
        rate(mapped_json) / rate(floor_json)
    );
    println!(
        "  versions:   mapped {:>9.0}/s; prost decode only       {:>9.0}/s; ratio {:.2}x",
        rate(mapped_pb),
        rate(floor_pb),
        rate(mapped_pb) / rate(floor_pb)
    );
}
