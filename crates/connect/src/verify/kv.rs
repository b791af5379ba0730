//! Comparing two key-value stores (source prefix against target prefix).
//!
//! Both sides are read in key order, a page at a time, each at one pinned
//! revision (a consistent view of each side), and merge-joined on the key
//! suffix (the key without its side's prefix). Memory holds one page per
//! side plus the first [`MAX_LISTED`] differences, whatever the size of the
//! stores.
//!
//! Each entry is hashed with BLAKE3 over (suffix, value, has-lease) into a
//! digest per range (one range per source page) and per side; equal stores
//! give equal digests range by range, which is what the cutover records as
//! proof. Differences are found key by key while merging: missing on the
//! target, extra on the target, value differs, lease differs (one side has
//! a lease and the other not, or the target's remaining TTL is shorter
//! than the source's, or longer than the source's grant, by more than the
//! tolerance: etcd resets remaining TTLs to the grant on leader changes). Readers leave out Ferry's reserved keys on both sides.

use super::{KvCursor, KvEntry, KvReader};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};

/// How many differing keys a report lists (all are counted).
pub const MAX_LISTED: usize = 100;
/// Lease TTLs remembered per side during one comparison.
const TTL_CACHE_MAX: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    MissingOnTarget,
    ExtraOnTarget,
    ValueDiffers,
    LeaseDiffers,
}

/// One differing key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// The key without its side's prefix (lossy UTF-8).
    pub key_suffix: String,
    pub kind: DiffKind,
    pub detail: String,
}

/// The digests of one range of keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDigest {
    pub first_suffix: String,
    pub last_suffix: String,
    pub source_keys: u64,
    pub target_keys: u64,
    pub source_digest: String,
    pub target_digest: String,
    pub equal: bool,
}

/// The outcome of [`compare`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub source: String,
    pub target: String,
    pub source_revision: i64,
    pub target_revision: i64,
    pub source_keys: u64,
    pub target_keys: u64,
    pub equal_keys: u64,
    pub missing_on_target: u64,
    pub extra_on_target: u64,
    pub value_differs: u64,
    pub lease_differs: u64,
    /// The first [`MAX_LISTED`] differences, in key order.
    pub differences: Vec<Difference>,
    pub ranges: Vec<RangeDigest>,
    /// BLAKE3 over every entry of each side, hex.
    pub source_digest: String,
    pub target_digest: String,
}

impl VerifyReport {
    /// Differing keys of every kind.
    pub fn difference_count(&self) -> u64 {
        self.missing_on_target + self.extra_on_target + self.value_differs + self.lease_differs
    }

    /// True when no difference was found.
    pub fn is_equal(&self) -> bool {
        self.difference_count() == 0
    }
}

/// One difference as a line of a [`super::Comparison`].
pub fn detail_line(d: &Difference) -> String {
    format!("{:?} {}: {}", d.kind, d.key_suffix, d.detail)
}

/// One side of the merge: a cursor and its current page.
struct Side<'a> {
    store: &'a dyn KvReader,
    cursor: Box<dyn KvCursor>,
    page: VecDeque<KvEntry>,
    /// Lease id → (remaining TTL, granted TTL), seconds.
    ttl: HashMap<i64, (i64, i64)>,
    all: blake3::Hasher,
    range: blake3::Hasher,
    keys: u64,
    range_keys: u64,
}

impl<'a> Side<'a> {
    fn new(store: &'a dyn KvReader) -> Self {
        Side {
            store,
            cursor: store.cursor(),
            page: VecDeque::new(),
            ttl: HashMap::new(),
            all: blake3::Hasher::new(),
            range: blake3::Hasher::new(),
            keys: 0,
            range_keys: 0,
        }
    }

    /// Loads a page if the current one is used up; `true` if it did.
    async fn fill(&mut self) -> Result<bool, String> {
        let mut loaded = false;
        while self.page.is_empty() {
            match self.cursor.next_page().await? {
                Some(p) => {
                    self.page.extend(p);
                    loaded = true;
                }
                None => break,
            }
        }
        Ok(loaded)
    }

    fn suffix<'k>(&self, kv: &'k KvEntry) -> &'k [u8] {
        &kv.suffix
    }

    fn hash(&mut self, kv: &KvEntry) {
        let suffix = self.suffix(kv);
        for h in [&mut self.all, &mut self.range] {
            h.update(&(suffix.len() as u64).to_be_bytes());
            h.update(suffix);
            h.update(&(kv.value.len() as u64).to_be_bytes());
            h.update(&kv.value);
            h.update(&[u8::from(kv.lease != 0)]);
        }
        self.keys += 1;
        self.range_keys += 1;
    }

    /// (remaining, granted) TTL of a lease, in seconds.
    async fn ttl_of(&mut self, lease: i64) -> Result<(i64, i64), String> {
        if let Some(t) = self.ttl.get(&lease) {
            return Ok(*t);
        }
        if self.ttl.len() >= TTL_CACHE_MAX {
            self.ttl.clear();
        }
        let t = self.store.lease_ttl(lease).await?;
        self.ttl.insert(lease, t);
        Ok(t)
    }

    fn close_range(&mut self) -> (String, u64) {
        let d = std::mem::replace(&mut self.range, blake3::Hasher::new());
        let n = std::mem::take(&mut self.range_keys);
        (d.finalize().to_hex().to_string(), n)
    }
}

/// Compares `source`'s prefix with `target`'s; see the module doc.
pub async fn compare(
    source: &dyn KvReader,
    target: &dyn KvReader,
    ttl_tolerance_s: i64,
) -> Result<VerifyReport, String> {
    let mut report = VerifyReport {
        source: source.name().to_string(),
        target: target.name().to_string(),
        ..Default::default()
    };
    let mut s = Side::new(source);
    let mut t = Side::new(target);
    let mut range_first: Option<String> = None;
    let mut range_last = String::new();
    loop {
        if s.page.is_empty() {
            // A new source page starts a new range.
            if range_first.is_some() {
                close(&mut report, &mut s, &mut t, range_first.take(), &range_last);
            }
            // Both sides' next pages at once: each is a round trip to its
            // own server, and verification runs inside the cutover's
            // read-only window.
            tokio::try_join!(s.fill(), t.fill())?;
        } else {
            t.fill().await?;
        }
        let (sk, tk) = (s.page.front(), t.page.front());
        let order = match (sk, tk) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => s.suffix(a).cmp(t.suffix(b)),
        };
        let (label, kind) = match order {
            Ordering::Less => {
                let kv = s.page.pop_front().expect("peeked");
                s.hash(&kv);
                (
                    lossy(s.suffix(&kv)),
                    Some((DiffKind::MissingOnTarget, String::new())),
                )
            }
            Ordering::Greater => {
                let kv = t.page.pop_front().expect("peeked");
                t.hash(&kv);
                (
                    lossy(t.suffix(&kv)),
                    Some((DiffKind::ExtraOnTarget, String::new())),
                )
            }
            Ordering::Equal => {
                let a = s.page.pop_front().expect("peeked");
                let b = t.page.pop_front().expect("peeked");
                s.hash(&a);
                t.hash(&b);
                let kind = entry_diff(&mut s, &mut t, &a, &b, ttl_tolerance_s).await?;
                (lossy(s.suffix(&a)), kind)
            }
        };
        range_first.get_or_insert_with(|| label.clone());
        range_last.clone_from(&label);
        match kind {
            None => report.equal_keys += 1,
            Some((kind, detail)) => {
                match kind {
                    DiffKind::MissingOnTarget => report.missing_on_target += 1,
                    DiffKind::ExtraOnTarget => report.extra_on_target += 1,
                    DiffKind::ValueDiffers => report.value_differs += 1,
                    DiffKind::LeaseDiffers => report.lease_differs += 1,
                }
                if report.differences.len() < MAX_LISTED {
                    report.differences.push(Difference {
                        key_suffix: label,
                        kind,
                        detail,
                    });
                }
            }
        }
    }
    if range_first.is_some() {
        close(&mut report, &mut s, &mut t, range_first.take(), &range_last);
    }
    report.source_keys = s.keys;
    report.target_keys = t.keys;
    report.source_revision = s.cursor.position();
    report.target_revision = t.cursor.position();
    report.source_digest = s.all.finalize().to_hex().to_string();
    report.target_digest = t.all.finalize().to_hex().to_string();
    Ok(report)
}

/// How two entries with the same suffix differ, if they do.
async fn entry_diff(
    s: &mut Side<'_>,
    t: &mut Side<'_>,
    a: &KvEntry,
    b: &KvEntry,
    tolerance_s: i64,
) -> Result<Option<(DiffKind, String)>, String> {
    if a.value != b.value {
        // Digests, never the values: a value may be a secret.
        let digest = |v: &[u8]| blake3::hash(v).to_hex()[..16].to_string();
        let detail = format!(
            "{} bytes (BLAKE3 {}) at the source, {} (BLAKE3 {}) on the target",
            a.value.len(),
            digest(&a.value),
            b.value.len(),
            digest(&b.value)
        );
        return Ok(Some((DiffKind::ValueDiffers, detail)));
    }
    match (a.lease != 0, b.lease != 0) {
        (false, false) => Ok(None),
        (true, false) => Ok(Some((
            DiffKind::LeaseDiffers,
            "leased at the source, not on the target".into(),
        ))),
        (false, true) => Ok(Some((
            DiffKind::LeaseDiffers,
            "leased on the target, not at the source".into(),
        ))),
        (true, true) => {
            // etcd resets a lease's remaining TTL to its grant when a leader
            // is elected (a restart, say), so remaining TTLs of two clusters
            // drift apart by design. What matters: the target's key must not
            // expire before the source's could, nor outlive the longest the
            // source grants.
            let ((ta, ga), (tb, _)) = (s.ttl_of(a.lease).await?, t.ttl_of(b.lease).await?);
            if tb + tolerance_s < ta {
                Ok(Some((
                    DiffKind::LeaseDiffers,
                    format!("remaining TTL {ta} s at the source but only {tb} s on the target"),
                )))
            } else if tb > ga.max(ta) + tolerance_s {
                Ok(Some((
                    DiffKind::LeaseDiffers,
                    format!("remaining TTL {tb} s on the target, longer than the source's grant of {ga} s"),
                )))
            } else {
                Ok(None)
            }
        }
    }
}

fn close(
    report: &mut VerifyReport,
    s: &mut Side<'_>,
    t: &mut Side<'_>,
    first: Option<String>,
    last: &str,
) {
    let (sd, sn) = s.close_range();
    let (td, tn) = t.close_range();
    report.ranges.push(RangeDigest {
        first_suffix: first.unwrap_or_default(),
        last_suffix: last.to_string(),
        source_keys: sn,
        target_keys: tn,
        equal: sd == td,
        source_digest: sd,
        target_digest: td,
    });
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The comparison's one-line summary and first differences.
pub fn summarise(r: &VerifyReport) -> super::Comparison {
    super::Comparison {
        compared: r.source_keys,
        differences: r.difference_count(),
        details: r.differences.iter().take(20).map(detail_line).collect(),
        summary: format!(
            "compared {} source keys (revision {}) with {} target keys (revision {}) over {} ranges: {} equal, {} missing on the target, {} extra on the target, {} values differ, {} leases differ",
            r.source_keys, r.source_revision, r.target_keys, r.target_revision, r.ranges.len(), r.equal_keys, r.missing_on_target, r.extra_on_target, r.value_differs, r.lease_differs
        ),
        ..Default::default()
    }
}
