//! Source compaction past the journaled revision: an error, or (when
//! allowed) a re-snapshot that converges, sweeping keys deleted meanwhile.

use crate::common::*;
use etcd_client::CompactionOptions;
use ferry_core::ShardId;
use ferry_etcd::{verify, EtcdError, EtcdTailer, TailerOptions};
use ferry_journal::Journal;
use ferry_lag::LagTracker;
use ferry_replay::worker::Shutdown;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_fails_or_resnapshots_and_converges() {
    let (Some(src), Some(dst)) = (etcd(), etcd()) else {
        return;
    };
    let mut c = client(&src).await;
    fill(&mut c, "app/", 2_000, 50).await;
    let source = store(&src, "app/").await;
    let target = store(&dst, "copy/").await;
    let shards = 3;
    let no_resnapshot = TailerOptions {
        resnapshot_on_compaction: false,
        ..Default::default()
    };
    // First run: copy everything, journal checkpoint at R, stop.
    let p = Pipeline::start(
        source.clone(),
        target.clone(),
        shards,
        no_resnapshot.clone(),
    )
    .await;
    p.drain(&source, Duration::from_secs(60)).await;
    let journaled = p.journal.source_checkpoint(SOURCE).unwrap().unwrap().order as i64;
    let (kept, r) = p.stop_keep_journal().await;
    r.unwrap();
    let journal = Arc::clone(&kept.1);

    // Meanwhile: deletes, overwrites and new keys, then compaction past R.
    for i in (0..2_000).step_by(7) {
        c.delete(format!("app/{i:06}"), None).await.unwrap();
    }
    for i in 0..100 {
        c.put(format!("app/{i:06}"), "changed", None).await.unwrap();
        c.put(format!("app/new-{i}"), "new", None).await.unwrap();
    }
    let head = source.head_revision().await.unwrap();
    c.compact(head, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();

    // Without re-snapshot: a clear error naming both revisions.
    let (_stop, shutdown) = Shutdown::new();
    let t = EtcdTailer::new(
        source.clone(),
        SOURCE.into(),
        ferry_core::ShardSpan::all(shards),
        no_resnapshot,
    );
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        t.run(Arc::clone(&journal), Arc::new(LagTracker::new()), shutdown),
    )
    .await
    .expect("the tailer stops on compaction")
    .unwrap_err();
    match &e {
        EtcdError::Compacted {
            resume,
            compact_revision,
            ..
        } => {
            assert_eq!(*resume, journaled + 1);
            assert_eq!(*compact_revision, head);
        }
        other => panic!("expected Compacted, got {other}"),
    }
    assert!(e.to_string().contains(&format!("revision {head}")), "{e}");

    // With re-snapshot: new markers, then the target converges exactly.
    drop(journal);
    let p = Pipeline::resume(
        source.clone(),
        target.clone(),
        kept,
        shards,
        TailerOptions::default(),
    )
    .await;
    p.drain(&source, Duration::from_secs(60)).await;
    let report = verify::compare(&source, &target, 3).await.unwrap();
    assert!(report.is_equal(), "{:#?}", report.differences);
    assert_eq!(
        target.count_prefix().await.unwrap(),
        source.count_prefix().await.unwrap()
    );
    let begins: usize = (0..shards)
        .map(|s| {
            p.journal
                .read(
                    ShardId(s),
                    1,
                    ferry_journal::ReadBudget {
                        max_events: 1 << 20,
                        max_bytes: 1 << 30,
                    },
                )
                .unwrap()
                .iter()
                .filter(|e| matches!(e.op, ferry_core::Op::SnapshotBegin { .. }))
                .count()
        })
        .sum();
    assert_eq!(
        begins,
        2 * shards as usize,
        "one snapshot per shard, then the re-snapshot"
    );
    p.stop().await.unwrap();
}
