//! The sink alone: exactly-once batches, transaction limits, duplicates,
//! refused values, the snapshot sweep.

use crate::common::*;
use etcd_client::GetOptions;
use ferry_core::{ErrorKind, Op, ShardId};
use ferry_etcd::{EtcdSink, EtcdStore, MAX_TXN_OPS, TARGET_MAX_REQUEST_BYTES};
use ferry_replay::Sink;

async fn get(s: &EtcdStore, key: &str) -> Option<Vec<u8>> {
    let mut c = s.client();
    let r = c.get(key, None).await.unwrap();
    r.kvs().first().map(|kv| kv.value().to_vec())
}

async fn count(s: &EtcdStore, prefix: &str) -> i64 {
    let mut c = s.client();
    c.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await
    .unwrap()
    .count()
}

fn sink(target: &EtcdStore) -> EtcdSink {
    EtcdSink::new(
        target.clone(),
        "src/",
        "target".into(),
        ferry_core::ShardSpan::all(1),
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_batch_twice_is_a_no_op_and_unknown_outcomes_resync() {
    let Some(etcd) = etcd() else { return };
    let target = store(&etcd, "dst/").await;
    let a = sink(&target);
    let b = sink(&target);
    a.startup().await.unwrap();
    // `b` reads the checkpoint (absent) before `a` writes: its next compare
    // fails, as after a timeout whose transaction landed anyway.
    assert_eq!(b.durable_checkpoint(ShardId(0)).await.unwrap(), None);
    let batch: Vec<_> = (1..=10)
        .map(|i| put(0, i, &format!("src/k{i}"), vec![b'a'; 10]))
        .collect();
    assert_eq!(a.apply(ShardId(0), &batch).await.unwrap(), 10);
    let rev = target.head_revision().await.unwrap();
    assert_eq!(a.apply(ShardId(0), &batch).await.unwrap(), 10);
    assert_eq!(
        target.head_revision().await.unwrap(),
        rev,
        "a repeated batch writes nothing"
    );
    assert_eq!(
        get(&target, "dst/k3").await.as_deref(),
        Some(&[b'a'; 10][..])
    );

    let mut more: Vec<_> = (1..=10)
        .map(|i| put(0, i, &format!("src/k{i}"), vec![b'x'; 10]))
        .collect();
    more.extend((11..=15).map(|i| put(0, i, &format!("src/k{i}"), vec![b'b'; 10])));
    assert_eq!(b.apply(ShardId(0), &more).await.unwrap(), 15);
    // 1..=10 were not written twice: the old values are still there.
    assert_eq!(
        get(&target, "dst/k3").await.as_deref(),
        Some(&[b'a'; 10][..])
    );
    assert_eq!(
        get(&target, "dst/k15").await.as_deref(),
        Some(&[b'b'; 10][..])
    );
    assert_eq!(
        sink(&target).durable_checkpoint(ShardId(0)).await.unwrap(),
        Some(15)
    );
    assert_eq!(count(&target, "dst/").await, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_batches_split_within_limits_and_duplicates_collapse() {
    let Some(etcd) = etcd() else { return };
    let target = store(&etcd, "dst/").await;
    let s = sink(&target);
    // 400 ops of 8 KiB: more than 128 ops and 3 MiB, so several transactions.
    let n = 400u64;
    let mut batch: Vec<_> = (1..=n)
        .map(|i| put(0, i, &format!("src/k{:03}", i % 300), vec![b'v'; 8192]))
        .collect();
    // One key changed several times inside the batch: the last op wins.
    batch.push(put(0, n + 1, "src/dup", b"1".to_vec()));
    batch.push(put(0, n + 2, "src/dup", b"2".to_vec()));
    batch.push(del(0, n + 3, "src/dup"));
    batch.push(put(0, n + 4, "src/dup", b"3".to_vec()));
    batch.push(put(0, n + 5, "src/gone", b"x".to_vec()));
    batch.push(del(0, n + 6, "src/gone"));
    let before = target.head_revision().await.unwrap();
    assert_eq!(s.apply(ShardId(0), &batch).await.unwrap(), n + 6);
    let txns = target.head_revision().await.unwrap() - before;
    let bytes = n as usize * 8192;
    let min_txns = (bytes / TARGET_MAX_REQUEST_BYTES).max(n as usize / MAX_TXN_OPS) as i64;
    assert!(
        txns > min_txns && txns <= min_txns + 3,
        "{txns} transactions for {bytes} bytes"
    );
    assert_eq!(count(&target, "dst/k").await, 300);
    assert_eq!(get(&target, "dst/dup").await.as_deref(), Some(&b"3"[..]));
    assert_eq!(get(&target, "dst/gone").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_the_request_limit_is_a_permanent_error_naming_the_key() {
    let Some(etcd) = etcd() else { return };
    let target = store(&etcd, "dst/").await;
    let s = sink(&target);
    let batch = vec![
        put(0, 1, "src/ok", b"1".to_vec()),
        put(0, 2, "src/huge", vec![0; 2 << 20]),
    ];
    let e = s.apply(ShardId(0), &batch).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(
        e.message.contains("dst/huge") && e.message.contains("max-request-bytes"),
        "{e}"
    );
    // What fitted before it is durable.
    assert_eq!(s.durable_checkpoint(ShardId(0)).await.unwrap(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_sweep_removes_only_this_shards_stale_keys() {
    let Some(etcd) = etcd() else { return };
    let target = store(&etcd, "dst/").await;
    let shards = 2;
    let s = EtcdSink::new(
        target.clone(),
        "src/",
        "target".into(),
        ferry_core::ShardSpan::all(shards),
        None,
    );
    let shard_of = |k: &str| ferry_core::shard_for_key(k.as_bytes(), shards).0;
    let keys: Vec<String> = (0..40).map(|i| format!("src/k{i:02}")).collect();
    // First copy: every key, applied per shard.
    for sh in 0..shards {
        let mine: Vec<_> = keys.iter().filter(|k| shard_of(k) == sh).collect();
        let evs: Vec<_> = mine
            .iter()
            .enumerate()
            .map(|(i, k)| put(sh, i as u64 + 1, k, b"old".to_vec()))
            .collect();
        s.apply(ShardId(sh), &evs).await.unwrap();
    }
    assert_eq!(count(&target, "dst/").await, 40);
    // A re-snapshot of shard 0 that no longer has the even keys.
    let sh = 0;
    let next = s.durable_checkpoint(ShardId(sh)).await.unwrap().unwrap() + 1;
    let survivors: Vec<_> = keys
        .iter()
        .enumerate()
        .filter(|(i, k)| shard_of(k) == sh && i % 2 == 1)
        .map(|(_, k)| k.clone())
        .collect();
    let mut evs = vec![ev(sh, next, "", Op::SnapshotBegin { total_keys: None })];
    for (i, k) in survivors.iter().enumerate() {
        evs.push(put(sh, next + 1 + i as u64, k, b"new".to_vec()));
    }
    let end = next + 1 + survivors.len() as u64;
    evs.push(ev(sh, end, "", Op::SnapshotEnd));
    evs.push(ev(sh, end + 1, "", Op::Fence));
    assert_eq!(s.apply(ShardId(sh), &evs).await.unwrap(), end + 1);
    for (i, k) in keys.iter().enumerate() {
        let dst = k.replacen("src/", "dst/", 1);
        let v = get(&target, &dst).await;
        match (shard_of(k) == sh, i % 2 == 1) {
            (true, true) => assert_eq!(v.as_deref(), Some(&b"new"[..]), "{k}"),
            (true, false) => assert_eq!(v, None, "{k} should be swept"),
            (false, _) => assert_eq!(v.as_deref(), Some(&b"old"[..]), "{k} is another shard's"),
        }
    }
    // Re-running the tail (a crash before the checkpoint) changes nothing.
    let rev = target.head_revision().await.unwrap();
    assert_eq!(s.apply(ShardId(sh), &evs).await.unwrap(), end + 1);
    assert_eq!(target.head_revision().await.unwrap(), rev);
}
