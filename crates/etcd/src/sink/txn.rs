//! Building transactions within etcd's limits.
//!
//! Invariants of every transaction built here:
//! - at most [`MAX_TXN_OPS`] operations, the checkpoint update included;
//! - at most [`TXN_BUDGET_BYTES`] of keys and values, unless a single
//!   operation alone is larger (it then goes alone, and etcd's refusal is
//!   reported naming that key);
//! - no key twice: etcd refuses a transaction that names a key more than
//!   once, so a later operation on a key replaces the earlier one in place.
//!   The transaction is atomic, so the intermediate state is never visible
//!   and dropping it changes nothing.

use crate::{MAX_TXN_OPS, TARGET_MAX_REQUEST_BYTES};
use etcd_client::{PutOptions, TxnOp};
use std::collections::HashMap;

/// Bytes of keys and values per transaction: the request limit less room
/// for the compare, the checkpoint and protobuf framing.
pub(crate) const TXN_BUDGET_BYTES: usize = TARGET_MAX_REQUEST_BYTES - 16 * 1024;
/// Protobuf framing per operation, roughly (tags, lengths, lease id).
const OP_OVERHEAD_BYTES: usize = 32;

/// One write on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: Vec<u8>,
    },
}

impl Write {
    pub fn key(&self) -> &[u8] {
        match self {
            Write::Put { key, .. } | Write::Delete { key } => key,
        }
    }

    fn bytes(&self) -> usize {
        OP_OVERHEAD_BYTES
            + match self {
                Write::Put { key, value, .. } => key.len() + value.len(),
                Write::Delete { key } => key.len(),
            }
    }

    pub fn into_op(self) -> TxnOp {
        match self {
            Write::Put { key, value, lease } => {
                let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
                TxnOp::put(key, value, opts)
            }
            Write::Delete { key } => TxnOp::delete(key, None),
        }
    }
}

/// The writes of one transaction in the making.
#[derive(Default)]
pub(crate) struct TxnWrites {
    writes: Vec<Write>,
    index: HashMap<Vec<u8>, usize>,
    bytes: usize,
    /// Source lease ids whose mapping record is among the writes.
    pub lease_mappings: Vec<i64>,
    /// Target lease ids the puts attach keys to.
    pub leases_used: Vec<i64>,
}

impl TxnWrites {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether `extra` more writes of `bytes` total can join (one op is kept
    /// for the checkpoint). An empty transaction takes anything.
    pub fn fits(&self, extra: &[&Write]) -> bool {
        if self.writes.is_empty() {
            return true;
        }
        let new_keys = extra
            .iter()
            .filter(|w| !self.index.contains_key(w.key()))
            .count();
        let bytes: usize = extra.iter().map(|w| w.bytes()).sum();
        self.writes.len() + new_keys < MAX_TXN_OPS && self.bytes + bytes <= TXN_BUDGET_BYTES
    }

    /// Adds `w`, replacing an earlier write of the same key.
    pub fn push(&mut self, w: Write) {
        self.bytes += w.bytes();
        match self.index.get(w.key()) {
            Some(&i) => {
                self.bytes -= self.writes[i].bytes();
                self.writes[i] = w;
            }
            None => {
                self.index.insert(w.key().to_vec(), self.writes.len());
                self.writes.push(w);
            }
        }
    }

    /// The largest put, for an error that must name a key.
    pub fn largest(&self) -> Option<(&[u8], usize)> {
        self.writes
            .iter()
            .map(|w| (w.key(), w.bytes() - OP_OVERHEAD_BYTES))
            .max_by_key(|(_, b)| *b)
    }

    pub fn into_ops(self) -> Vec<TxnOp> {
        self.writes.into_iter().map(Write::into_op).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, n: usize) -> Write {
        Write::Put {
            key: k.as_bytes().to_vec(),
            value: vec![b'x'; n],
            lease: 0,
        }
    }

    #[test]
    fn limits_and_duplicates() {
        let mut t = TxnWrites::default();
        for i in 0..(MAX_TXN_OPS - 1) {
            let w = put(&format!("k{i}"), 1);
            assert!(t.fits(&[&w]));
            t.push(w);
        }
        // The last op is the checkpoint's.
        assert!(!t.fits(&[&put("new", 1)]));
        // A key already present does not need a new op.
        assert!(t.fits(&[&put("k3", 1)]));
        t.push(Write::Delete {
            key: b"k3".to_vec(),
        });
        assert_eq!(t.len(), MAX_TXN_OPS - 1);

        let mut t = TxnWrites::default();
        let big = put("big", TXN_BUDGET_BYTES);
        assert!(t.fits(&[&big]), "an empty txn takes anything");
        t.push(big);
        assert!(!t.fits(&[&put("small", 1)]));
        assert_eq!(t.largest().map(|(k, _)| k), Some(&b"big"[..]));

        let mut t = TxnWrites::default();
        t.push(put("a", 10));
        t.push(put("a", 20));
        t.push(Write::Delete { key: b"a".to_vec() });
        assert_eq!(t.len(), 1);
        assert_eq!(t.bytes, OP_OVERHEAD_BYTES + 1);
    }
}
