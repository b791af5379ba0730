//! The snapshot sweep: removing target keys a snapshot did not rewrite.
//!
//! At a shard's `SnapshotBegin` the sink records T0 = the target's head
//! revision + 1 in the shard's checkpoint. Every key the snapshot copies is
//! put again and so gets a mod revision ≥ T0. At `SnapshotEnd`, a target
//! key under the mapped prefix that belongs to this shard (by the shard of
//! its *source* key) and has a mod revision < T0 was not in the source at
//! the snapshot revision: it is deleted.
//!
//! Why that is safe: only this shard's worker writes this shard's keys, and
//! it runs one batch at a time, so between T0 and the sweep nothing but the
//! snapshot wrote them. Why it is idempotent: a sweep re-run after a crash
//! finds only what is left to delete; the checkpoint moves past
//! `SnapshotEnd` only after the sweep finished. Memory is bounded: keys are
//! read a page at a time (keys only) and deleted in transactions within
//! [`MAX_TXN_OPS`](crate::MAX_TXN_OPS).

use super::txn::{TxnWrites, Write};
use crate::store::RangeCursor;
use crate::{EtcdError, EtcdStore};
use etcd_client::Txn;
use ferry_core::{ShardId, ShardSpan};

/// What a sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SweepStats {
    pub scanned: u64,
    pub deleted: u64,
}

/// Deletes this shard's keys under the target prefix last modified before
/// `before`.
pub(crate) async fn sweep(
    target: &EtcdStore,
    source_prefix: &[u8],
    span: ShardSpan,
    shard: ShardId,
    before: i64,
) -> Result<SweepStats, EtcdError> {
    let target_prefix = target.prefix().to_vec();
    // Keys only: the filter on mod revision is applied here, because etcd
    // applies a server-side mod-revision filter only after reading the whole
    // rest of the range for every page.
    let mut cursor = RangeCursor::prefix(&target_prefix, 0).keys_only();
    let mut stats = SweepStats::default();
    let mut batch = TxnWrites::default();
    while let Some(page) = cursor.next_page(target).await? {
        for kv in page {
            stats.scanned += 1;
            if kv.mod_revision() >= before {
                continue;
            }
            let suffix = &kv.key()[target_prefix.len()..];
            let mut source_key = source_prefix.to_vec();
            source_key.extend_from_slice(suffix);
            if span.shard_for(&source_key) != shard {
                continue;
            }
            let w = Write::Delete {
                key: kv.key().to_vec(),
            };
            if !batch.fits(&[&w]) {
                stats.deleted += commit(target, std::mem::take(&mut batch)).await?;
            }
            batch.push(w);
        }
    }
    if !batch.is_empty() {
        stats.deleted += commit(target, batch).await?;
    }
    Ok(stats)
}

async fn commit(target: &EtcdStore, batch: TxnWrites) -> Result<u64, EtcdError> {
    let n = batch.len() as u64;
    let mut kv = target.kv();
    target
        .timed(
            "deleting keys the snapshot did not rewrite",
            kv.txn(Txn::new().and_then(batch.into_ops())),
        )
        .await?;
    Ok(n)
}
