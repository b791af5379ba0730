//! Walking one transaction's tree, and consistent snapshots.
//!
//! **Consistency without the lock.** bbolt never overwrites a page of the
//! tree of the newest committed transaction T: transaction T+1 writes only
//! pages that were free at T (or new ones at the end), then its meta to page
//! (T+1) % 2. Pages of tree T that T+1 replaced become reusable only when
//! transaction T+2 begins, and T+2 begins only after T+1 committed. So
//! everything read while the newest valid meta is still T is T's data. The
//! walker checks the meta pages every [`CHECK_EVERY_PAGES`] pages and when
//! it ends, and fails with [`BoltError::Moved`] as soon as T is no longer
//! the newest: whatever was read must then be read again at the new head.
//! (A check that tolerated T+1 would be wrong: T+2 writes its pages before
//! its meta, so a reader cannot see that it started.)
//!
//! **Termination on any input.** Page ids must lie in `2..hwm`; a page
//! reached twice in one walk is an error (no cycle can loop); nesting of
//! pages plus buckets is bounded by [`MAX_DEPTH`]; inline pages live inside
//! their parent's bytes and are bounded by them.

use crate::file::BoltFile;
use crate::format::{self, BucketRef, Meta, FLAG_BRANCH, FLAG_LEAF, PAGE_HEADER};
use crate::pages::{Loaded, PageReader};
use crate::BoltError;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

/// Deepest nesting of pages and buckets accepted; a real tree of a few
/// billion keys is 6 to 8 pages deep, and Cells nests buckets 4 deep.
pub const MAX_DEPTH: u32 = 128;
/// How often (in pages read) a walk checks that its transaction is still
/// the newest, so a read that lost its consistency stops early.
pub const CHECK_EVERY_PAGES: u32 = 512;
/// Full reads tried by [`BoltFile::read_all`] before giving up.
pub const DEFAULT_READ_ATTEMPTS: u32 = 20;

/// A bucket path, outermost first.
pub(crate) type BucketPath = Arc<Vec<Vec<u8>>>;

struct Work {
    pgid: u64,
    path: BucketPath,
    depth: u32,
}

/// A leaf page read by a [`Walker`], already validated; its bytes borrow
/// the walker's buffer until [`LeafPage::into_owned`].
pub(crate) struct LeafPage<'a> {
    pub pgid: u64,
    pub path: BucketPath,
    pub bytes: Cow<'a, [u8]>,
    /// Root pages of its non-inline sub-buckets (inline ones' included).
    pub sub_roots: Vec<u64>,
    count: u16,
}

/// Called per item: (bucket path, key, item).
pub(crate) type ItemFn<'f> = dyn FnMut(&[Vec<u8>], &[u8], ItemRef<'_>) + 'f;

/// Called per entry by [`Snapshot::visit`]: (bucket path, key, value or
/// `None` for a bucket).
pub type VisitFn<'f> = dyn FnMut(&[Vec<u8>], &[u8], Option<&[u8]>) + 'f;

/// One item of a leaf page.
pub(crate) enum ItemRef<'a> {
    Value(&'a [u8]),
    /// A bucket; for an inline one, its items follow with the longer path.
    Bucket,
}

impl LeafPage<'_> {
    /// A copy that outlives the walker's next read.
    pub fn into_owned(self) -> LeafPage<'static> {
        LeafPage {
            pgid: self.pgid,
            path: self.path,
            bytes: Cow::Owned(self.bytes.into_owned()),
            sub_roots: self.sub_roots,
            count: self.count,
        }
    }

    /// Calls `f(path, key, item)` for every item, inline buckets' contents
    /// included (right after their bucket item).
    pub fn for_each_item(&self, f: &mut ItemFn<'_>) {
        items_of(&self.bytes, self.count, &self.path, f);
    }
}

fn items_of(page: &[u8], count: u16, path: &[Vec<u8>], f: &mut ItemFn<'_>) {
    // Validated when the page was read.
    let Ok(elems) = format::leaf_elems(page, count) else {
        return;
    };
    for e in elems.map_while(Result::ok) {
        if !e.is_bucket {
            f(path, e.key, ItemRef::Value(e.value));
            continue;
        }
        f(path, e.key, ItemRef::Bucket);
        if let Ok(BucketRef::Inline(inline)) = format::bucket_ref(e.value) {
            if let Some(h) = format::header(inline) {
                // Only inline buckets pay for a longer path.
                let mut sub = path.to_vec();
                sub.push(e.key.to_vec());
                items_of(inline, h.count, &sub, f);
            }
        }
    }
}

/// Walks the tree of one transaction, one page at a time, with an explicit
/// stack (bounded memory: the stack holds page ids, not pages; pages come
/// from a [`PageReader`], whose buffers are bounded too).
pub(crate) struct Walker {
    meta: Meta,
    stack: Vec<Work>,
    visited: Vec<u64>,
    reader: PageReader,
    since_check: u32,
    pages_read: u64,
    /// When set, branch pages read are recorded here (page id, children).
    pub branches: Option<Vec<(u64, Vec<u64>)>>,
}

impl Walker {
    pub fn new(meta: Meta) -> Self {
        let words = usize::try_from(meta.hwm.div_ceil(64)).unwrap_or(usize::MAX);
        Walker {
            meta,
            stack: vec![Work {
                pgid: meta.root,
                path: Arc::new(Vec::new()),
                depth: 0,
            }],
            visited: vec![0; words],
            reader: PageReader::default(),
            since_check: 0,
            pages_read: 0,
            branches: None,
        }
    }

    pub fn meta(&self) -> Meta {
        self.meta
    }

    pub fn pages_read(&self) -> u64 {
        self.pages_read
    }

    /// Fails with [`BoltError::Moved`] unless the walk's transaction is
    /// still the newest.
    pub fn ensure_current(&mut self, file: &BoltFile) -> Result<(), BoltError> {
        self.since_check = 0;
        let head = file.head()?;
        if head.txid != self.meta.txid || head.root != self.meta.root {
            return Err(BoltError::Moved {
                path: file.path().to_string(),
                txid: self.meta.txid,
            });
        }
        Ok(())
    }

    fn mark(&mut self, file: &BoltFile, pgid: u64, span: u64) -> Result<(), BoltError> {
        for p in pgid..pgid + span {
            let (w, bit) = ((p / 64) as usize, 1u64 << (p % 64));
            let Some(word) = self.visited.get_mut(w) else {
                return Err(file.corrupt(p, "the page lies past the high-water mark"));
            };
            if *word & bit != 0 {
                return Err(file.corrupt(
                    p,
                    "the page is reached twice in one tree (a loop or a shared page)",
                ));
            }
            *word |= bit;
        }
        Ok(())
    }

    /// The next leaf page. `skip(pgid)` is asked before a page is read: a
    /// `true` leaves that whole subtree out. `None` at the end, after a
    /// final check that the transaction is still the newest.
    pub fn next_leaf(
        &mut self,
        file: &BoltFile,
        skip: &mut dyn FnMut(u64) -> bool,
    ) -> Result<Option<LeafPage<'_>>, BoltError> {
        let found = match self.step(file, skip) {
            // Damage seen after the writer moved on may be pages it reused:
            // that is a read to do again, not a damaged file.
            Err(e @ BoltError::Corrupt { .. }) => {
                self.ensure_current(file)?;
                return Err(e);
            }
            other => other?,
        };
        Ok(found.map(|(page, leaf)| LeafPage {
            pgid: leaf.pgid,
            path: leaf.path,
            bytes: Cow::Borrowed(self.reader.bytes(&page)),
            sub_roots: leaf.sub_roots,
            count: leaf.count,
        }))
    }

    fn step(
        &mut self,
        file: &BoltFile,
        skip: &mut dyn FnMut(u64) -> bool,
    ) -> Result<Option<(Loaded, LeafPage<'static>)>, BoltError> {
        while let Some(work) = self.stack.pop() {
            if skip(work.pgid) {
                continue;
            }
            if work.depth > MAX_DEPTH {
                return Err(file.corrupt(
                    work.pgid,
                    format!("pages and buckets nest deeper than {MAX_DEPTH} levels"),
                ));
            }
            let page = self.reader.load(
                file,
                work.pgid,
                self.meta.hwm,
                self.stack.iter().rev().map(|w| w.pgid),
            )?;
            let h = page.header;
            self.mark(file, work.pgid, u64::from(h.overflow) + 1)?;
            self.pages_read += 1;
            self.since_check += 1;
            if self.since_check >= CHECK_EVERY_PAGES {
                self.ensure_current(file)?;
            }
            if h.flags & FLAG_BRANCH != 0 {
                let children = format::branch_children(self.reader.bytes(&page), h.count)
                    .map_err(|r| file.corrupt(work.pgid, r))?;
                for &child in children.iter().rev() {
                    self.stack.push(Work {
                        pgid: child,
                        path: Arc::clone(&work.path),
                        depth: work.depth + 1,
                    });
                }
                if let Some(b) = &mut self.branches {
                    b.push((work.pgid, children));
                }
                continue;
            }
            if h.flags & FLAG_LEAF == 0 {
                return Err(file.corrupt(
                    work.pgid,
                    format!(
                        "a tree points to it but its flags 0x{:x} say it is neither a branch nor a leaf",
                        h.flags
                    ),
                ));
            }
            let mut roots = Vec::new();
            check_leaf(
                self.reader.bytes(&page),
                h.count,
                &work.path,
                work.depth,
                &mut roots,
            )
            .map_err(|r| file.corrupt(work.pgid, r))?;
            let sub_roots = roots.iter().map(|(_, r)| *r).collect();
            for (name_path, root) in roots.into_iter().rev() {
                self.stack.push(Work {
                    pgid: root,
                    path: Arc::new(name_path),
                    depth: work.depth + 1,
                });
            }
            let leaf = LeafPage {
                pgid: work.pgid,
                path: work.path,
                // Filled in by `next_leaf`: a borrow of the reader cannot
                // be returned from inside this loop, which reads again.
                bytes: Cow::Borrowed(&[]),
                sub_roots,
                count: h.count,
            };
            return Ok(Some((page, leaf)));
        }
        self.ensure_current(file)?;
        Ok(None)
    }
}

/// Validates a leaf page (and its inline buckets, recursively) and collects
/// the root pages of its sub-buckets with their paths.
fn check_leaf(
    page: &[u8],
    count: u16,
    path: &[Vec<u8>],
    depth: u32,
    roots: &mut Vec<(Vec<Vec<u8>>, u64)>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "inline buckets nest deeper than {MAX_DEPTH} levels"
        ));
    }
    for e in format::leaf_elems(page, count)? {
        let e = e?;
        if !e.is_bucket {
            continue;
        }
        let mut sub = path.to_vec();
        sub.push(e.key.to_vec());
        match format::bucket_ref(e.value).map_err(|r| in_bucket(&sub, &r))? {
            BucketRef::Root(root) => roots.push((sub, root)),
            BucketRef::Inline(inline) => {
                let h = format::header(inline)
                    .filter(|_| inline.len() >= PAGE_HEADER)
                    .ok_or_else(|| in_bucket(&sub, "inline page shorter than a page header"))?;
                if h.flags & FLAG_LEAF == 0 {
                    return Err(in_bucket(&sub, "inline page is not a leaf"));
                }
                check_leaf(inline, h.count, &sub, depth + 1, roots)
                    .map_err(|r| in_bucket(&sub, &r))?;
            }
        }
    }
    Ok(())
}

fn in_bucket(path: &[Vec<u8>], reason: &str) -> String {
    format!("bucket {}: {reason}", crate::key::show_path(path))
}

/// One entry of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// The bucket the entry lives in, outermost first.
    pub buckets: Vec<Vec<u8>>,
    pub key: Vec<u8>,
    /// The value, or `None` when the entry is a bucket (named `key`).
    pub value: Option<Vec<u8>>,
}

/// One transaction of a Bolt file, pinned by its meta.
pub struct Snapshot<'f> {
    file: &'f BoltFile,
    meta: Meta,
}

impl BoltFile {
    /// The newest committed transaction, for reading.
    pub fn snapshot(&self) -> Result<Snapshot<'_>, BoltError> {
        Ok(Snapshot {
            file: self,
            meta: self.head()?,
        })
    }

    /// Every entry of one transaction, read again (up to
    /// [`DEFAULT_READ_ATTEMPTS`] times) while a writer moves the file.
    /// Holds the whole content in memory: for large files use
    /// [`Snapshot::entries`].
    pub fn read_all(&self) -> Result<(u64, Vec<Entry>), BoltError> {
        for _ in 0..DEFAULT_READ_ATTEMPTS {
            let snap = self.snapshot()?;
            match snap.entries().collect::<Result<Vec<_>, _>>() {
                Ok(entries) => return Ok((snap.txid(), entries)),
                Err(BoltError::Moved { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(BoltError::Unstable {
            path: self.path().to_string(),
            attempts: DEFAULT_READ_ATTEMPTS,
        })
    }
}

impl<'f> Snapshot<'f> {
    pub fn txid(&self) -> u64 {
        self.meta.txid
    }

    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// True while this transaction is still the file's newest.
    pub fn is_current(&self) -> Result<bool, BoltError> {
        let head = self.file.head()?;
        Ok(head.txid == self.meta.txid && head.root == self.meta.root)
    }

    /// Calls `f(buckets, key, value)` for every entry (`value` is `None`
    /// for a bucket) without copying anything out of the read buffers
    /// (bounded: see the `pages` module); returns the number of entries. On [`BoltError::Moved`] the
    /// calls made so far must be discarded, as for [`Snapshot::entries`].
    pub fn visit(&self, f: &mut VisitFn<'_>) -> Result<u64, BoltError> {
        let mut walker = Walker::new(self.meta);
        let mut n = 0u64;
        while let Some(leaf) = walker.next_leaf(self.file, &mut |_| false)? {
            leaf.for_each_item(&mut |path, key, item| {
                n += 1;
                match item {
                    ItemRef::Value(v) => f(path, key, Some(v)),
                    ItemRef::Bucket => f(path, key, None),
                }
            });
        }
        Ok(n)
    }

    /// Every entry (values and buckets, nested ones included), read lazily
    /// one page at a time (from bounded read buffers). If the iterator yields [`BoltError::Moved`], the
    /// file moved on during the read and everything it yielded must be
    /// discarded; only an iteration that reaches its end is known to be
    /// this one transaction.
    pub fn entries(&self) -> Entries<'f> {
        Entries {
            file: self.file,
            walker: Walker::new(self.meta),
            ready: VecDeque::new(),
            finished: false,
        }
    }
}

/// See [`Snapshot::entries`].
pub struct Entries<'f> {
    file: &'f BoltFile,
    walker: Walker,
    ready: VecDeque<Entry>,
    finished: bool,
}

impl Entries<'_> {
    /// Pages read so far.
    pub fn pages_read(&self) -> u64 {
        self.walker.pages_read()
    }
}

impl Iterator for Entries<'_> {
    type Item = Result<Entry, BoltError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(Ok(e));
            }
            if self.finished {
                return None;
            }
            match self.walker.next_leaf(self.file, &mut |_| false) {
                Ok(Some(leaf)) => {
                    let ready = &mut self.ready;
                    leaf.for_each_item(&mut |path, key, item| {
                        ready.push_back(Entry {
                            buckets: path.to_vec(),
                            key: key.to_vec(),
                            value: match item {
                                ItemRef::Value(v) => Some(v.to_vec()),
                                ItemRef::Bucket => None,
                            },
                        })
                    });
                }
                Ok(None) => self.finished = true,
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
