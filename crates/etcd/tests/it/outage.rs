//! Outages of the source and of the target under a running pipeline: the
//! tailer resumes its watch from the last journaled revision, the sink
//! retries, and the stores end equal.

use crate::common::*;
use ferry_etcd::{verify, TailerOptions};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_and_target_outages_are_ridden_out() {
    let (Some(mut src), Some(mut dst)) = (etcd(), etcd()) else {
        return;
    };
    let mut c = client(&src).await;
    fill(&mut c, "app/", 1_000, 100).await;
    let source = store(&src, "app/").await;
    let target = store(&dst, "copy/").await;
    let p = Pipeline::start(source.clone(), target.clone(), 2, TailerOptions::default()).await;
    p.drain(&source, Duration::from_secs(60)).await;

    // Source down for a while; the tailer retries with backoff.
    src.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    src.restart().unwrap();
    let mut c = client(&src).await;
    for i in 0..200 {
        c.put(format!("app/after-source-outage-{i}"), "x", None)
            .await
            .unwrap();
    }
    c.delete("app/000001", None).await.unwrap();
    p.drain(&source, Duration::from_secs(60)).await;

    // Target down while the source changes; the workers retry.
    dst.stop();
    for i in 0..200 {
        c.put(format!("app/during-target-outage-{i}"), "y", None)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    dst.restart().unwrap();
    p.drain(&source, Duration::from_secs(60)).await;

    let report = verify::compare(&source, &target, 3).await.unwrap();
    assert!(report.is_equal(), "{:#?}", report.differences);
    assert_eq!(report.source_keys, 1_000 + 400 - 1);
    // Shutdown is prompt even right after the outages.
    let t = Instant::now();
    p.stop().await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        t.elapsed()
    );
}
