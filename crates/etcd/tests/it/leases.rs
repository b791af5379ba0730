//! Leases survive the copy: a leased key on the source is leased on the
//! target, lives as long as the source keeps its lease alive, and goes
//! when the source lease is revoked.

use crate::common::*;
use etcd_client::{Client, LeaseGrantOptions};
use ferry_etcd::{verify, EtcdStore, TailerOptions};
use std::time::{Duration, Instant};

/// (value, lease id) of `key` on the target.
async fn target_key(c: &mut Client, key: &str) -> Option<(Vec<u8>, i64)> {
    let r = c.get(key, None).await.unwrap();
    r.kvs().first().map(|kv| (kv.value().to_vec(), kv.lease()))
}

async fn ttl(c: &mut Client, lease: i64) -> i64 {
    c.lease_time_to_live(lease, None).await.unwrap().ttl()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_keys_follow_their_source_lease() {
    let (Some(src), Some(dst)) = (etcd(), etcd()) else {
        return;
    };
    let mut sc = client(&src).await;
    let mut dc = client(&dst).await;
    let lease = sc
        .lease_grant(5, None::<LeaseGrantOptions>)
        .await
        .unwrap()
        .id();
    put_leased(&mut sc, "app/session", "alive", lease).await;
    sc.put("app/plain", "p", None).await.unwrap();
    let source: EtcdStore = store(&src, "app/").await;
    let target = store(&dst, "copy/").await;
    let p = Pipeline::start(source.clone(), target.clone(), 1, TailerOptions::default()).await;

    // The source keeps its lease alive for longer than its TTL, across a
    // restart of the whole pipeline (the new sink takes the recorded target
    // lease over, the new tailer learns the source lease from it).
    let (mut keeper, _stream) = sc.lease_keep_alive(lease).await.unwrap();
    let mut target_lease = 0;
    let mut p = Some(p);
    let mut restarted = false;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(16) {
        keeper.keep_alive().await.unwrap();
        if let Some((v, l)) = target_key(&mut dc, "copy/session").await {
            assert_eq!(v, b"alive");
            assert_ne!(l, 0, "the target key has a lease");
            assert!(
                target_lease == 0 || target_lease == l,
                "one target lease, reused"
            );
            target_lease = l;
        }
        if !restarted && target_lease != 0 && start.elapsed() > Duration::from_secs(6) {
            let (kept, r) = p.take().unwrap().stop_keep_journal().await;
            r.unwrap();
            p = Some(
                Pipeline::resume(
                    source.clone(),
                    target.clone(),
                    kept,
                    1,
                    TailerOptions::default(),
                )
                .await,
            );
            restarted = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let p = p.unwrap();
    assert!(restarted);
    assert_ne!(target_lease, 0, "the leased key reached the target");
    // 16 s > 3 x the 5 s TTL: only the keepers kept the target lease alive.
    assert!(
        target_key(&mut dc, "copy/session").await.is_some(),
        "kept alive past its TTL"
    );
    let left = ttl(&mut dc, target_lease).await;
    assert!(
        (1..=5).contains(&left),
        "target TTL follows the source's: {left}"
    );
    let report = verify::compare(&source, &target, 3).await.unwrap();
    assert!(report.is_equal(), "{:#?}", report.differences);
    assert_eq!(
        target_key(&mut dc, "copy/plain").await.map(|(_, l)| l),
        Some(0)
    );

    // Revoked at the source: gone on the target within a few seconds.
    sc.lease_revoke(lease).await.unwrap();
    let revoked = Instant::now();
    until("target key removed", Duration::from_secs(5), || {
        let mut dc = dc.clone();
        async move { target_key(&mut dc, "copy/session").await.is_none() }
    })
    .await;
    until("target lease revoked", Duration::from_secs(5), || {
        let mut dc = dc.clone();
        async move { ttl(&mut dc, target_lease).await <= 0 }
    })
    .await;
    eprintln!(
        "leases: target key gone {:?} after the source lease was revoked",
        revoked.elapsed()
    );
    p.stop().await.unwrap();
}
