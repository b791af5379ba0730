//! Comparing a source prefix with a target prefix: the key-value
//! comparison of `ferry_connect::verify::kv` over two etcd stores.

pub use ferry_connect::verify::kv::{DiffKind, Difference, RangeDigest, VerifyReport, MAX_LISTED};

use crate::EtcdStore;

/// Compares `source`'s prefix with `target`'s (see
/// [`ferry_connect::verify::kv`]).
pub async fn compare(
    source: &EtcdStore,
    target: &EtcdStore,
    ttl_tolerance_s: i64,
) -> Result<VerifyReport, String> {
    let (s, t) = (
        crate::connector::kv_reader(source),
        crate::connector::kv_reader(target),
    );
    ferry_connect::verify::kv::compare(&s, &t, ttl_tolerance_s).await
}
