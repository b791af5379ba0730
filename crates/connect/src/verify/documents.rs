//! Comparing documents by namespace (a source's selected namespaces with
//! the same namespaces of a target).
//!
//! Per namespace: document counts, and an order-independent digest of each
//! side: the wrapping sum, lane by lane, of BLAKE3 over (namespace, raw
//! BSON bytes) of every document. Raw bytes are the canonical form Ferry
//! promises to keep (field order and exact types), so equal digests mean
//! equal documents, whatever order the servers return them in; memory is
//! one batch per side.
//!
//! Where a namespace's digests differ, a second pass finds the `_id`s:
//! source documents in batches of 1000 are looked up on the target by `_id`
//! (missing or different), then target documents on the source (extra).
//! At most [`MAX_LISTED`] differences are listed; all are counted.
//!
//! Indexes are compared as the readers' normalised entries (key, name,
//! unique, sparse, partial filter, TTL, collation…), `_id_` aside.

use super::DocumentsReader;
use crate::model::Namespace;
use bson::{Bson, Document, RawDocumentBuf};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How many differing documents a report lists.
pub const MAX_LISTED: usize = 100;
/// Documents looked up per round trip in the second pass.
const LOOKUP_BATCH: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    MissingOnTarget,
    ExtraOnTarget,
    DocumentDiffers,
}

/// One differing document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub namespace: String,
    /// The `_id`, in a short human form.
    pub id: String,
    pub kind: DiffKind,
}

/// One namespace's comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceReport {
    pub namespace: String,
    pub source_documents: u64,
    pub target_documents: u64,
    pub source_digest: String,
    pub target_digest: String,
    pub missing_on_target: u64,
    pub extra_on_target: u64,
    pub differs: u64,
    /// Indexes (by name) that are absent or different on the target, or
    /// only on the target.
    pub index_differences: Vec<String>,
}

impl NamespaceReport {
    pub fn is_equal(&self) -> bool {
        self.source_digest == self.target_digest
            && self.source_documents == self.target_documents
            && self.index_differences.is_empty()
    }
}

/// The outcome of [`compare`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub source: String,
    pub target: String,
    pub namespaces: Vec<NamespaceReport>,
    /// The first [`MAX_LISTED`] differing documents.
    pub differences: Vec<Difference>,
}

impl VerifyReport {
    pub fn is_equal(&self) -> bool {
        self.namespaces.iter().all(NamespaceReport::is_equal)
    }

    pub fn source_documents(&self) -> u64 {
        self.namespaces.iter().map(|n| n.source_documents).sum()
    }
}

/// Order-independent digest of a multiset of documents.
#[derive(Default)]
struct Digest {
    lanes: [u64; 4],
    count: u64,
}

impl Digest {
    fn add(&mut self, ns: &Namespace, doc: &[u8]) {
        let mut h = blake3::Hasher::new();
        h.update(ns.to_string().as_bytes());
        h.update(&[0]);
        h.update(doc);
        let out = h.finalize();
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&out.as_bytes()[i * 8..i * 8 + 8]);
            *lane = lane.wrapping_add(u64::from_le_bytes(b));
        }
        self.count += 1;
    }

    fn hex(&self) -> String {
        self.lanes.iter().map(|l| format!("{l:016x}")).collect()
    }
}

async fn digest(store: &dyn DocumentsReader, ns: &Namespace) -> Result<Digest, String> {
    let mut docs = store.scan(ns).await?;
    let mut d = Digest::default();
    while let Some(doc) = docs.try_next().await? {
        d.add(ns, doc.as_bytes());
    }
    Ok(d)
}

/// The `_id` of a raw document as a lookup key (its element's bytes).
fn id_key(d: &RawDocumentBuf) -> Option<(Vec<u8>, Bson)> {
    let id = d.get("_id").ok()??;
    let mut one = RawDocumentBuf::new();
    one.append("_id", id.to_raw_bson());
    let b = Bson::try_from(id.to_raw_bson()).ok()?;
    Some((one.into_bytes(), b))
}

/// Compares `namespaces` (as named on the source; the target uses the
/// same names) of `source` and `target`; see the module doc.
pub async fn compare(
    source: &dyn DocumentsReader,
    target: &dyn DocumentsReader,
    namespaces: &[Namespace],
) -> Result<VerifyReport, String> {
    let mut report = VerifyReport {
        source: source.name().to_string(),
        target: target.name().to_string(),
        ..Default::default()
    };
    for ns in namespaces {
        let (s, t) = tokio::try_join!(digest(source, ns), digest(target, ns))?;
        let mut nr = NamespaceReport {
            namespace: ns.to_string(),
            source_documents: s.count,
            target_documents: t.count,
            source_digest: s.hex(),
            target_digest: t.hex(),
            ..Default::default()
        };
        if nr.source_digest != nr.target_digest || s.count != t.count {
            find_differences(source, target, ns, &mut nr, &mut report.differences).await?;
        }
        let (si, ti) = tokio::try_join!(source.indexes(ns), target.indexes(ns))?;
        nr.index_differences = index_differences(&si, &ti);
        report.namespaces.push(nr);
    }
    Ok(report)
}

pub(crate) fn index_differences(source: &[Document], target: &[Document]) -> Vec<String> {
    let by_name = |v: &[Document]| -> HashMap<String, Document> {
        v.iter()
            .map(|d| (d.get_str("name").unwrap_or("").to_string(), d.clone()))
            .collect()
    };
    let (s, t) = (by_name(source), by_name(target));
    let mut out = Vec::new();
    for (name, d) in &s {
        match t.get(name) {
            None => out.push(format!("{name}: missing on the target")),
            Some(td) if td != d => out.push(format!(
                "{name}: defined differently on the target ({d} at the source, {td} on the target)"
            )),
            Some(_) => {}
        }
    }
    for name in t.keys() {
        if !s.contains_key(name) {
            out.push(format!("{name}: only on the target"));
        }
    }
    out.sort();
    out
}

/// The second pass: which `_id`s differ.
async fn find_differences(
    source: &dyn DocumentsReader,
    target: &dyn DocumentsReader,
    ns: &Namespace,
    nr: &mut NamespaceReport,
    listed: &mut Vec<Difference>,
) -> Result<(), String> {
    let mut note = |kind: DiffKind, id: &Bson, nr: &mut NamespaceReport| {
        match kind {
            DiffKind::MissingOnTarget => nr.missing_on_target += 1,
            DiffKind::ExtraOnTarget => nr.extra_on_target += 1,
            DiffKind::DocumentDiffers => nr.differs += 1,
        }
        if listed.len() < MAX_LISTED {
            listed.push(Difference {
                namespace: ns.to_string(),
                id: id.to_string().chars().take(120).collect(),
                kind,
            });
        }
    };
    // Source against target (missing, different), then target against
    // source (extra).
    for (from, to, forward) in [(source, target, true), (target, source, false)] {
        let mut docs = from.scan(ns).await?;
        let mut batch: Vec<(Vec<u8>, Bson, RawDocumentBuf)> = Vec::new();
        loop {
            let next = docs.try_next().await?;
            let done = next.is_none();
            if let Some(d) = next {
                if let Some((k, b)) = id_key(&d) {
                    batch.push((k, b, d));
                }
            }
            if batch.len() >= LOOKUP_BATCH || (done && !batch.is_empty()) {
                let ids: Vec<Bson> = batch.iter().map(|(_, b, _)| b.clone()).collect();
                let found: HashMap<Vec<u8>, RawDocumentBuf> = to
                    .lookup(ns, ids)
                    .await?
                    .into_iter()
                    .filter_map(|d| Some((id_key(&d)?.0, d)))
                    .collect();
                for (k, id, d) in batch.drain(..) {
                    match (found.get(&k), forward) {
                        (None, true) => note(DiffKind::MissingOnTarget, &id, nr),
                        (None, false) => note(DiffKind::ExtraOnTarget, &id, nr),
                        (Some(o), true) if o.as_bytes() != d.as_bytes() => {
                            note(DiffKind::DocumentDiffers, &id, nr)
                        }
                        _ => {}
                    }
                }
            }
            if done {
                break;
            }
        }
    }
    Ok(())
}

/// The comparison's one-line summary and first differences.
pub fn summarise(r: &VerifyReport, source_name: &str, target_name: &str) -> super::Comparison {
    let mut c = super::Comparison {
        compared: r.source_documents(),
        ..Default::default()
    };
    for d in &r.differences {
        c.note(format!("{d:?}"));
    }
    for ns in &r.namespaces {
        for i in &ns.index_differences {
            c.note(format!("{}: index {i}", ns.namespace));
        }
        if ns.source_documents != ns.target_documents && r.differences.is_empty() {
            c.note(format!(
                "{}: {} documents on the source, {} on the target",
                ns.namespace, ns.source_documents, ns.target_documents
            ));
        }
    }
    c.summary = format!(
        "compared {} namespaces ({} source documents) of {source_name} with {target_name} by content digests, indexes included: {} differences",
        r.namespaces.len(),
        c.compared,
        c.differences
    );
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_order_independent() {
        let ns = Namespace::new("d", "c");
        let (mut a, mut b) = (Digest::default(), Digest::default());
        a.add(&ns, b"one");
        a.add(&ns, b"two");
        b.add(&ns, b"two");
        b.add(&ns, b"one");
        assert_eq!(a.hex(), b.hex());
        b.add(&ns, b"three");
        assert_ne!(a.hex(), b.hex());
        let i = vec![bson::doc! {"key": {"x": 1}, "name": "x_1"}];
        let j = vec![bson::doc! {"key": {"x": 1}, "name": "x_1", "unique": true}];
        assert!(index_differences(&i, &i).is_empty());
        assert_eq!(index_differences(&i, &j).len(), 1);
        assert_eq!(index_differences(&i, &[]).len(), 1);
    }
}
