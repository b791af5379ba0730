//! Change detection between transactions, by copy-on-write page ids.
//!
//! [`ChangeTracker`] keeps a summary of the tree of the last transaction it
//! read: per page, its children (branch) or its items with a 64-bit hash of
//! each value (leaf). Memory is about `key length + 40` bytes per key plus
//! a few bytes per page; values are never kept.
//!
//! When the file's newest transaction is **the next one** (T+1 after T),
//! a page id that was in tree T and is reachable in T+1 holds exactly what
//! it held in T, with its whole subtree: T+1 could only write pages that
//! were free at T. So the tracker reads T+1 from the root down and stops at
//! every page it already knows: the cost is the pages the transaction
//! rewrote, whatever the file's size. Pages of T that T+1 no longer
//! reaches are found from T's summary the same way (from T's root down to
//! the kept pages); the keys of those old pages against the keys of the
//! new pages give the puts and deletes.
//!
//! When **more than one** transaction passed, a page id may have been
//! freed and reused in between, so ids prove nothing: the tracker reads
//! every page of the new tree, and a leaf counts as unchanged only if its
//! id, bucket and bytes (hash) are all the same. The result is exact
//! either way; only the cost differs. Polling often keeps most diffs on the
//! cheap path.
//!
//! Value equality is decided by XXH3-64 of the value: a changed value
//! with the same hash (probability 2^-64 per change) would be missed.

use crate::file::BoltFile;
use crate::format::Meta;
use crate::walk::{BucketPath, ItemRef, LeafPage, Walker};
use crate::BoltError;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64;

/// One change between two transactions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// `key` in bucket `buckets` was created or got a new value.
    Put {
        buckets: Vec<Vec<u8>>,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// `key` in bucket `buckets` was deleted.
    Delete { buckets: Vec<Vec<u8>>, key: Vec<u8> },
    /// Bucket `name` was created inside `buckets`.
    BucketCreate {
        buckets: Vec<Vec<u8>>,
        name: Vec<u8>,
    },
    /// Bucket `name` inside `buckets` was deleted; every key it held has
    /// its own [`Change::Delete`] (and nested buckets their own
    /// `BucketDelete`) in the same diff.
    BucketDelete {
        buckets: Vec<Vec<u8>>,
        name: Vec<u8>,
    },
}

/// The changes from transaction `from` to `to`.
#[derive(Clone, Debug)]
pub struct Diff {
    pub from: u64,
    pub to: u64,
    pub changes: Vec<Change>,
    /// Pages read to compute it (the cost).
    pub pages_read: u64,
    /// True when `to` was the transaction right after `from` (the cheap
    /// path; see the module doc).
    pub adjacent: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SumVal {
    Value(u64),
    Bucket,
}

struct SumItem {
    /// Index into the leaf's `paths`.
    path: u32,
    key: Box<[u8]>,
    val: SumVal,
}

struct LeafSum {
    hash: u64,
    paths: Box<[BucketPath]>,
    items: Box<[SumItem]>,
    sub_roots: Box<[u64]>,
}

enum PageSum {
    Branch(Box<[u64]>),
    Leaf(LeafSum),
}

impl PageSum {
    fn children(&self) -> &[u64] {
        match self {
            PageSum::Branch(c) => c,
            PageSum::Leaf(l) => &l.sub_roots,
        }
    }
}

fn summarize(leaf: &LeafPage<'_>) -> LeafSum {
    let mut paths: Vec<BucketPath> = vec![Arc::clone(&leaf.path)];
    let mut items = Vec::new();
    leaf.for_each_item(&mut |path, key, item| {
        let idx = match paths.iter().position(|p| p.as_slice() == path) {
            Some(i) => i,
            None => {
                paths.push(Arc::new(path.to_vec()));
                paths.len() - 1
            }
        };
        items.push(SumItem {
            path: idx as u32,
            key: key.into(),
            val: match item {
                ItemRef::Value(v) => SumVal::Value(xxh3_64(v)),
                ItemRef::Bucket => SumVal::Bucket,
            },
        });
    });
    LeafSum {
        hash: xxh3_64(&leaf.bytes),
        paths: paths.into(),
        items: items.into(),
        sub_roots: leaf.sub_roots.clone().into(),
    }
}

/// The summary of one transaction's tree; see the module doc.
pub struct ChangeTracker {
    meta: Meta,
    pages: HashMap<u64, PageSum>,
}

/// Reads one transaction in validated chunks while building the
/// [`ChangeTracker`] for it (a tailer's snapshot).
pub struct SnapshotReader {
    walker: Walker,
    pages: HashMap<u64, PageSum>,
    done: bool,
    /// False when only the tracker is wanted ([`ChangeTracker::index`]).
    keep_entries: bool,
}

impl SnapshotReader {
    /// Starts at the file's newest transaction.
    pub fn new(file: &BoltFile) -> Result<Self, BoltError> {
        let mut walker = Walker::new(file.head()?);
        walker.branches = Some(Vec::new());
        Ok(SnapshotReader {
            walker,
            pages: HashMap::new(),
            done: false,
            keep_entries: true,
        })
    }

    pub fn txid(&self) -> u64 {
        self.walker.meta().txid
    }

    /// The next entries (about `max`, whole pages), or `None` at the end.
    /// Every chunk returned was read while its transaction was still the
    /// newest; [`BoltError::Moved`] means start over with a new reader.
    pub fn next_chunk(
        &mut self,
        file: &BoltFile,
        max: usize,
    ) -> Result<Option<Vec<crate::Entry>>, BoltError> {
        if self.done {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut pages = 0usize;
        while out.len() < max.max(1) && pages < max.max(1) {
            let Some(leaf) = self.walker.next_leaf(file, &mut |_| false)? else {
                self.done = true;
                break;
            };
            pages += 1;
            let keep = self.keep_entries;
            leaf.for_each_item(&mut |path, key, item| {
                if !keep {
                    return;
                }
                out.push(crate::Entry {
                    buckets: path.to_vec(),
                    key: key.to_vec(),
                    value: match item {
                        ItemRef::Value(v) => Some(v.to_vec()),
                        ItemRef::Bucket => None,
                    },
                })
            });
            self.pages
                .insert(leaf.pgid, PageSum::Leaf(summarize(&leaf)));
        }
        for (pgid, children) in self.walker.branches.iter_mut().flat_map(|b| b.drain(..)) {
            self.pages.insert(pgid, PageSum::Branch(children.into()));
        }
        if !self.done {
            // At the end, `next_leaf` already checked.
            self.walker.ensure_current(file)?;
        }
        if out.is_empty() && self.done {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// The tracker for this transaction; call after `next_chunk` gave `None`.
    pub fn finish(self) -> ChangeTracker {
        ChangeTracker {
            meta: self.walker.meta(),
            pages: self.pages,
        }
    }
}

impl ChangeTracker {
    /// Reads the newest transaction whole (no entries kept), retrying while
    /// the file moves, up to [`crate::walk::DEFAULT_READ_ATTEMPTS`] times.
    pub fn index(file: &BoltFile) -> Result<Self, BoltError> {
        for _ in 0..crate::walk::DEFAULT_READ_ATTEMPTS {
            let mut r = SnapshotReader::new(file)?;
            r.keep_entries = false;
            let run = (|| {
                while r.next_chunk(file, 4096)?.is_some() {}
                Ok::<_, BoltError>(())
            })();
            match run {
                Ok(()) => return Ok(r.finish()),
                Err(BoltError::Moved { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(BoltError::Unstable {
            path: file.path().to_string(),
            attempts: crate::walk::DEFAULT_READ_ATTEMPTS,
        })
    }

    /// The transaction this tracker summarizes.
    pub fn txid(&self) -> u64 {
        self.meta.txid
    }

    /// Pages summarized (a memory measure).
    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// The changes from this tracker's transaction to the file's newest,
    /// or `None` if it is the same. On success the tracker moves to the
    /// newest; on an error (including [`BoltError::Moved`]) it stays where
    /// it was, so the call can simply be repeated.
    pub fn poll(&mut self, file: &BoltFile) -> Result<Option<Diff>, BoltError> {
        let head = file.head()?;
        if head.txid == self.meta.txid && head.root == self.meta.root {
            return Ok(None);
        }
        let adjacent = head.txid == self.meta.txid + 1;
        let mut walker = Walker::new(head);
        walker.branches = Some(Vec::new());
        let old = &self.pages;
        let mut kept: HashSet<u64> = HashSet::new();
        let mut same: HashSet<u64> = HashSet::new();
        let mut fresh: Vec<LeafPage<'static>> = Vec::new();
        let mut new_pages: HashMap<u64, PageSum> = HashMap::new();
        loop {
            let leaf = walker.next_leaf(file, &mut |pgid| {
                if adjacent && old.contains_key(&pgid) {
                    kept.insert(pgid);
                    true
                } else {
                    false
                }
            })?;
            let Some(leaf) = leaf else { break };
            let sum = summarize(&leaf);
            if let Some(PageSum::Leaf(o)) = old.get(&leaf.pgid) {
                if o.hash == sum.hash && o.paths[0] == sum.paths[0] {
                    same.insert(leaf.pgid);
                    new_pages.insert(leaf.pgid, PageSum::Leaf(sum));
                    continue;
                }
            }
            new_pages.insert(leaf.pgid, PageSum::Leaf(sum));
            fresh.push(leaf.into_owned());
        }
        for (pgid, children) in walker.branches.take().unwrap_or_default() {
            new_pages.insert(pgid, PageSum::Branch(children.into()));
        }
        // Old pages the new tree no longer reaches: from the old root down,
        // stopping at kept pages (their subtrees are kept whole).
        let mut removed: Vec<u64> = Vec::new();
        let mut seen: HashSet<u64> = HashSet::new();
        let mut stack = vec![self.meta.root];
        while let Some(p) = stack.pop() {
            if kept.contains(&p) || !seen.insert(p) {
                continue;
            }
            if let Some(sum) = old.get(&p) {
                removed.push(p);
                stack.extend_from_slice(sum.children());
            }
        }
        // Keys of old pages that changed, by (bucket, key).
        let mut before: HashMap<(Vec<Vec<u8>>, Vec<u8>), SumVal> = HashMap::new();
        for p in &removed {
            if same.contains(p) {
                continue;
            }
            if let Some(PageSum::Leaf(l)) = old.get(p) {
                for it in l.items.iter() {
                    let path = l.paths[it.path as usize].as_ref().clone();
                    before.insert((path, it.key.to_vec()), it.val);
                }
            }
        }
        let mut changes = Vec::new();
        for leaf in &fresh {
            leaf.for_each_item(&mut |path, key, item| {
                let was = before.remove(&(path.to_vec(), key.to_vec()));
                let (buckets, key) = (path.to_vec(), key.to_vec());
                match (item, was) {
                    (ItemRef::Value(v), Some(SumVal::Value(h))) if h == xxh3_64(v) => {}
                    (ItemRef::Bucket, Some(SumVal::Bucket)) => {}
                    (ItemRef::Value(v), was) => {
                        if was == Some(SumVal::Bucket) {
                            changes.push(Change::BucketDelete {
                                buckets: buckets.clone(),
                                name: key.clone(),
                            });
                        }
                        changes.push(Change::Put {
                            buckets,
                            key,
                            value: v.to_vec(),
                        });
                    }
                    (ItemRef::Bucket, was) => {
                        if was.is_some() {
                            changes.push(Change::Delete {
                                buckets: buckets.clone(),
                                key: key.clone(),
                            });
                        }
                        changes.push(Change::BucketCreate { buckets, name: key });
                    }
                }
            });
        }
        for ((buckets, key), val) in before {
            changes.push(match val {
                SumVal::Value(_) => Change::Delete { buckets, key },
                SumVal::Bucket => Change::BucketDelete { buckets, name: key },
            });
        }
        // Deterministic order: buckets created before what goes in them,
        // deleted after.
        changes.sort_by(|a, b| change_rank(a).cmp(&change_rank(b)).then(a.cmp(b)));
        let pages_read = walker.pages_read();
        let diff = Diff {
            from: self.meta.txid,
            to: head.txid,
            changes,
            pages_read,
            adjacent,
        };
        for p in removed {
            self.pages.remove(&p);
        }
        self.pages.extend(new_pages);
        self.meta = head;
        Ok(Some(diff))
    }
}

fn change_rank(c: &Change) -> (u8, usize) {
    match c {
        Change::BucketCreate { buckets, .. } => (0, buckets.len()),
        Change::Put { .. } | Change::Delete { .. } => (1, 0),
        Change::BucketDelete { buckets, .. } => (2, usize::MAX - buckets.len()),
    }
}
