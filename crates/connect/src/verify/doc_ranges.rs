//! The documents model's ranges for the continuous verifier: each selected
//! namespace cut by `_id` in the order of its `_id` index.
//!
//! # Keys and their order
//!
//! A range's bound is `db 0x00 coll 0x00` followed by an order key of an
//! `_id`, so that the bytes of two bounds compare as MongoDB orders the
//! namespaces and the `_id`s (its canonical order of BSON types, then the
//! value: numbers by value across Int32, Int64 and Double, strings by their
//! bytes, ObjectIds by their bytes, …). The first bound of a namespace is
//! its prefix alone. The server reads a range with `min`/`max` on the `_id`
//! index ([`DocumentsReader::scan_range`]), which follows the index's own
//! order and is not bracketed by type, so the bounds here only decide which
//! range an event's `_id` dirties, never what a range reads.
//!
//! The order keys are exact for the types whose MongoDB order is simple and
//! common in `_id`s: MinKey, null, Int32, Int64 and Double (as an f64, which
//! may merge two large Int64s: a touch dirties every range whose bound has
//! the same order key), strings and symbols, ObjectId, booleans, dates and
//! MaxKey. An `_id` of any other type, or a namespace whose `_id` index has
//! a collation, makes the namespace *opaque*: its bounds are numbered in the
//! server's order and every event in it dirties all its ranges. That is
//! sound, only slower.
//!
//! Inside the window ([`RangeModel::window_extra`]) the model also compares
//! every namespace's indexes and the servers' metadata counts; a namespace
//! selected after the cut, or whose counts differ (a document inserted or
//! deleted on the target behind Ferry's back in a range verified earlier),
//! is compared whole. A document *changed* behind Ferry's back in such a
//! range is found by the background passes only.

use super::continuous::{Place, RangeModel, RangeReport};
use super::documents::index_differences;
use super::kv::{DiffKind, Difference, MAX_LISTED};
use super::DocumentsReader;
use crate::model::Namespace;
use async_trait::async_trait;
use bson::{Bson, RawBsonRef, RawDocumentBuf};
use futures::TryStreamExt;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// The canonical type order of MongoDB (`canonicalizeBSONType`), shifted by
/// 2 so that every class byte is above the empty first bound.
mod class {
    pub const MIN_KEY: u8 = 1;
    pub const NULL: u8 = 7;
    pub const NUMBER: u8 = 12;
    pub const STRING: u8 = 17;
    pub const OBJECT_ID: u8 = 37;
    pub const BOOLEAN: u8 = 42;
    pub const DATE: u8 = 47;
    pub const MAX_KEY: u8 = 102;
    /// An opaque namespace's numbered bounds.
    pub const NUMBERED: u8 = 0xFE;
}

/// The order key of an `_id` (see the module doc), `None` for a type this
/// module does not order. Prefix-free: no order key is a proper prefix of
/// another of the same type.
pub fn order_key(id: RawBsonRef<'_>) -> Option<Vec<u8>> {
    let number = |x: f64| {
        let mut k = vec![class::NUMBER];
        let bits = if x.is_nan() {
            0 // MongoDB orders NaN below every number
        } else {
            let b = (if x == 0.0 { 0.0f64 } else { x }).to_bits();
            if b >> 63 == 1 {
                !b
            } else {
                b | (1 << 63)
            }
        };
        k.extend_from_slice(&bits.to_be_bytes());
        k
    };
    Some(match id {
        RawBsonRef::MinKey => vec![class::MIN_KEY],
        RawBsonRef::Null => vec![class::NULL],
        RawBsonRef::Int32(i) => number(f64::from(i)),
        RawBsonRef::Int64(i) => number(i as f64),
        RawBsonRef::Double(x) => number(x),
        RawBsonRef::String(s) | RawBsonRef::Symbol(s) => {
            let mut k = vec![class::STRING];
            for &b in s.as_bytes() {
                k.push(b);
                if b == 0 {
                    k.push(0xFF);
                }
            }
            k.extend_from_slice(&[0, 0]);
            k
        }
        RawBsonRef::ObjectId(o) => {
            let mut k = vec![class::OBJECT_ID];
            k.extend_from_slice(&o.bytes());
            k
        }
        RawBsonRef::Boolean(b) => vec![class::BOOLEAN, u8::from(b)],
        RawBsonRef::DateTime(d) => {
            let mut k = vec![class::DATE];
            k.extend_from_slice(&((d.timestamp_millis() as u64) ^ (1 << 63)).to_be_bytes());
            k
        }
        RawBsonRef::MaxKey => vec![class::MAX_KEY],
        _ => return None,
    })
}

fn ns_prefix(ns: &Namespace) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.db.len() + ns.coll.len() + 2);
    k.extend_from_slice(ns.db.as_bytes());
    k.push(0);
    k.extend_from_slice(ns.coll.as_bytes());
    k.push(0);
    k
}

/// What the cut learnt, read by every touch.
#[derive(Default)]
struct Cut {
    /// Each bound's namespace and `_id` (`None`: the namespace's first).
    bounds: HashMap<Vec<u8>, (Namespace, Option<Bson>)>,
    namespaces: BTreeSet<Namespace>,
    opaque: BTreeSet<Namespace>,
}

/// Documents by namespace and `_id`, between two readers with range reads.
pub struct DocRanges {
    source: Arc<dyn DocumentsReader>,
    target: Arc<dyn DocumentsReader>,
    cut: Mutex<Cut>,
}

impl DocRanges {
    pub fn new(source: Arc<dyn DocumentsReader>, target: Arc<dyn DocumentsReader>) -> Self {
        DocRanges {
            source,
            target,
            cut: Mutex::new(Cut::default()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Cut) -> R) -> R {
        f(&mut self.cut.lock().expect("document ranges lock poisoned"))
    }

    /// The bounds of one namespace: its prefix, then every `every`th `_id`
    /// in the index's order; opaque (numbered) when an `_id` has no order
    /// key or strings are collated.
    async fn cut_namespace(
        &self,
        ns: &Namespace,
        every: usize,
    ) -> Result<(Vec<(Vec<u8>, Option<Bson>)>, u64, bool), String> {
        let prefix = ns_prefix(ns);
        let mut ids: Vec<(Option<Vec<u8>>, Bson)> = Vec::new();
        let mut docs = self.source.scan_range(ns, None, None).await?;
        let mut n = 0usize;
        let mut exact = self.source.binary_string_order(ns).await?;
        while let Some(d) = docs.try_next().await? {
            n += 1;
            let Ok(Some(id)) = d.get("_id") else { continue };
            let key = order_key(id);
            exact &= key.is_some();
            if n.is_multiple_of(every) {
                let b = Bson::try_from(id.to_raw_bson()).map_err(|e| format!("{ns}: _id: {e}"))?;
                ids.push((key, b));
            }
        }
        let mut out = vec![(prefix.clone(), None)];
        for (i, (key, id)) in ids.into_iter().enumerate() {
            let mut b = prefix.clone();
            match key.filter(|_| exact) {
                Some(k) => b.extend_from_slice(&k),
                None => {
                    b.push(class::NUMBERED);
                    b.extend_from_slice(&(i as u64).to_be_bytes());
                }
            }
            // Two `_id`s may share an order key (large Int64s as f64):
            // keep the first, a range of the two is still read whole.
            if out.last().is_some_and(|(last, _)| *last == b) {
                continue;
            }
            out.push((b, Some(id)));
        }
        Ok((out, n as u64, !exact))
    }

    /// Reads `[from, to)` of `ns` on one side, by `_id` element bytes.
    async fn read(
        side: &dyn DocumentsReader,
        ns: &Namespace,
        from: Option<Bson>,
        to: Option<Bson>,
    ) -> Result<HashMap<Vec<u8>, RawDocumentBuf>, String> {
        let mut docs = side.scan_range(ns, from, to).await?;
        let mut out = HashMap::new();
        while let Some(d) = docs.try_next().await? {
            if let Ok(Some(id)) = d.get("_id") {
                out.insert(crate::doc_key::encode(ns, id), d);
            }
        }
        Ok(out)
    }
}

fn difference(
    key: &[u8],
    kind: DiffKind,
    s: Option<&RawDocumentBuf>,
    t: Option<&RawDocumentBuf>,
) -> Difference {
    let (ns, id) = match crate::doc_key::decode(key) {
        Ok((ns, f)) => (ns.to_string(), crate::doc_key::id_text(&f)),
        Err(_) => (String::new(), "?".into()),
    };
    let side = |d: Option<&RawDocumentBuf>| match d {
        Some(d) => format!(
            "{} B, blake3 {}",
            d.as_bytes().len(),
            &blake3::hash(d.as_bytes()).to_hex()[..16]
        ),
        None => "absent".into(),
    };
    Difference {
        key_suffix: format!("{ns} {id}"),
        kind,
        detail: format!("source {}, target {}", side(s), side(t)),
    }
}

#[async_trait]
impl RangeModel for DocRanges {
    fn source_name(&self) -> &str {
        self.source.name()
    }
    fn target_name(&self) -> &str {
        self.target.name()
    }

    async fn cut(&self, every: usize) -> Result<(Vec<Vec<u8>>, u64), String> {
        let mut namespaces = self.source.namespaces().await?;
        namespaces.sort_by_key(ns_prefix);
        let mut cut = Cut::default();
        let mut bounds = Vec::new();
        let mut read = 0;
        for ns in namespaces {
            let (b, n, opaque) = self.cut_namespace(&ns, every).await?;
            read += n;
            if opaque {
                cut.opaque.insert(ns.clone());
            }
            for (key, id) in b {
                bounds.push(key.clone());
                cut.bounds.insert(key, (ns.clone(), id));
            }
            cut.namespaces.insert(ns);
        }
        // The first bound is the empty key; it holds nothing (every
        // namespace's prefix is a bound of its own).
        bounds.insert(0, Vec::new());
        self.with(|c| *c = cut);
        Ok((bounds, read))
    }

    fn place(&self, key: &[u8]) -> Place {
        let Ok((ns, filter)) = crate::doc_key::decode(key) else {
            return Place::Outside;
        };
        let prefix = ns_prefix(&ns);
        if self.with(|c| c.opaque.contains(&ns) || !c.namespaces.contains(&ns)) {
            return Place::Prefix(prefix);
        }
        match filter.get("_id").ok().flatten().and_then(order_key) {
            Some(k) => {
                let mut p = prefix;
                p.extend_from_slice(&k);
                Place::Prefix(p)
            }
            None => Place::Prefix(prefix),
        }
    }

    async fn compare(&self, from: &[u8], to: Option<&[u8]>) -> Result<RangeReport, String> {
        let (lo, hi) = self.with(|c| {
            let lo = c.bounds.get(from).cloned();
            let hi = to.and_then(|t| c.bounds.get(t).cloned());
            (lo, hi)
        });
        let Some((ns, lo)) = lo else {
            // The empty first bound: nothing is below every namespace.
            return Ok(RangeReport::default());
        };
        let hi = hi.filter(|(n, _)| *n == ns).and_then(|(_, id)| id);
        let s = Self::read(self.source.as_ref(), &ns, lo.clone(), hi.clone()).await?;
        let t = Self::read(self.target.as_ref(), &ns, lo, hi).await?;
        let mut r = RangeReport {
            keys: (s.len() + t.len()) as u64,
            source_keys: s.len() as u64,
            ..Default::default()
        };
        let mut note = |d: Difference| {
            r.difference_count += 1;
            if r.differences.len() < MAX_LISTED {
                r.differences.push(d);
            }
        };
        let mut keys: Vec<&Vec<u8>> = s
            .keys()
            .chain(t.keys().filter(|k| !s.contains_key(*k)))
            .collect();
        keys.sort();
        for k in keys {
            match (s.get(k), t.get(k)) {
                (Some(a), None) => note(difference(k, DiffKind::MissingOnTarget, Some(a), None)),
                (None, Some(b)) => note(difference(k, DiffKind::ExtraOnTarget, None, Some(b))),
                (Some(a), Some(b)) if a.as_bytes() != b.as_bytes() => {
                    note(difference(k, DiffKind::ValueDiffers, Some(a), Some(b)))
                }
                _ => {}
            }
        }
        Ok(r)
    }

    fn describe(&self, bound: &[u8]) -> String {
        self.with(|c| match c.bounds.get(bound) {
            Some((ns, Some(id))) => format!("{ns} _id {id}"),
            Some((ns, None)) => format!("{ns} (its first range)"),
            None => String::new(),
        })
    }

    /// The bounds' namespaces and `_id`s (each `_id` as the BSON of
    /// `{"id": _id}`, base64, so that it comes back with its type), and
    /// the namespaces, opaque or not.
    fn save_cut(&self) -> serde_json::Value {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        self.with(|c| {
            let mut bounds: Vec<serde_json::Value> = c
                .bounds
                .iter()
                .map(|(k, (ns, id))| {
                    let id = id.as_ref().map(|id| {
                        let mut d = bson::Document::new();
                        d.insert("id", id.clone());
                        b64.encode(bson::to_vec(&d).expect("a document serialises"))
                    });
                    serde_json::json!([b64.encode(k), ns.db, ns.coll, id])
                })
                .collect();
            bounds.sort_by_key(|b| b[0].as_str().unwrap_or_default().to_string());
            serde_json::json!({
                "bounds": bounds,
                "namespaces": c.namespaces.iter().collect::<Vec<_>>(),
                "opaque": c.opaque.iter().collect::<Vec<_>>(),
            })
        })
    }

    fn load_cut(&self, saved: &serde_json::Value) -> Result<(), String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let damaged = |what: &str| {
            format!("the saved progress is damaged ({what}); start again with --restart")
        };
        let mut cut = Cut::default();
        for b in saved["bounds"]
            .as_array()
            .ok_or_else(|| damaged("no bounds"))?
        {
            let text = |i: usize| b[i].as_str().ok_or_else(|| damaged("a bound"));
            let key = b64.decode(text(0)?).map_err(|e| damaged(&e.to_string()))?;
            let ns = Namespace::new(text(1)?, text(2)?);
            let id = match b[3].as_str() {
                None => None,
                Some(t) => {
                    let bytes = b64.decode(t).map_err(|e| damaged(&e.to_string()))?;
                    let d = bson::Document::from_reader(bytes.as_slice())
                        .map_err(|e| damaged(&e.to_string()))?;
                    Some(d.get("id").cloned().ok_or_else(|| damaged("an _id"))?)
                }
            };
            cut.bounds.insert(key, (ns, id));
        }
        let set = |name: &str| -> Result<BTreeSet<Namespace>, String> {
            serde_json::from_value(saved[name].clone()).map_err(|e| damaged(&e.to_string()))
        };
        cut.namespaces = set("namespaces")?;
        cut.opaque = set("opaque")?;
        self.with(|c| *c = cut);
        Ok(())
    }

    async fn window_extra(&self) -> Result<RangeReport, String> {
        let cut = self.with(|c| c.namespaces.clone());
        let now = self.source.namespaces().await?;
        let mut r = RangeReport::default();
        // Namespaces selected since the cut, and those whose counts
        // differ (a document inserted or deleted behind Ferry's back in a
        // range verified earlier): compared whole.
        let mut new: Vec<Namespace> = Vec::new();
        for ns in &now {
            if !cut.contains(ns) {
                new.push(ns.clone());
                continue;
            }
            let (s, t) = tokio::try_join!(
                self.source.estimated_count(ns),
                self.target.estimated_count(ns)
            )?;
            if s.is_some() && s != t {
                new.push(ns.clone());
            }
        }
        if !new.is_empty() {
            let whole =
                super::documents::compare(self.source.as_ref(), self.target.as_ref(), &new).await?;
            r.keys += whole
                .namespaces
                .iter()
                .map(|n| n.source_documents + n.target_documents)
                .sum::<u64>();
            r.source_keys += whole
                .namespaces
                .iter()
                .map(|n| n.source_documents)
                .sum::<u64>();
            for n in &whole.namespaces {
                if !n.is_equal() {
                    r.difference_count += (n.missing_on_target
                        + n.extra_on_target
                        + n.differs
                        + n.index_differences.len() as u64)
                        .max(1);
                }
            }
            for d in whole.differences.iter().take(MAX_LISTED) {
                r.differences.push(Difference {
                    key_suffix: format!("{} {}", d.namespace, d.id),
                    kind: match d.kind {
                        super::documents::DiffKind::MissingOnTarget => DiffKind::MissingOnTarget,
                        super::documents::DiffKind::ExtraOnTarget => DiffKind::ExtraOnTarget,
                        super::documents::DiffKind::DocumentDiffers => DiffKind::ValueDiffers,
                    },
                    detail: "found by comparing the whole namespace inside the window".into(),
                });
            }
        }
        // Indexes of the namespaces the ranges cover.
        for ns in now.iter().filter(|n| cut.contains(n) && !new.contains(n)) {
            let (si, ti) = tokio::try_join!(self.source.indexes(ns), self.target.indexes(ns))?;
            for d in index_differences(&si, &ti) {
                r.difference_count += 1;
                if r.differences.len() < MAX_LISTED {
                    r.differences.push(Difference {
                        key_suffix: ns.to_string(),
                        kind: DiffKind::ValueDiffers,
                        detail: format!("index {d}"),
                    });
                }
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;
    use bson::{rawdoc, DateTime};

    fn key(v: Bson) -> Vec<u8> {
        let d = rawdoc! {"_id": bson::RawBson::try_from(v).unwrap()};
        order_key(d.get("_id").unwrap().unwrap()).expect("ordered")
    }

    #[test]
    fn order_keys_follow_mongodb_order_across_types() {
        // MongoDB's order of these values (as its _id index sorts them).
        let ordered = [
            Bson::MinKey,
            Bson::Null,
            Bson::Double(f64::NAN),
            Bson::Double(f64::NEG_INFINITY),
            Bson::Int64(-5_000_000_000),
            Bson::Int32(-1),
            Bson::Double(-0.5),
            Bson::Int32(0),
            Bson::Double(0.5),
            Bson::Int64(1),
            Bson::Double(2.5),
            Bson::Int32(3),
            Bson::Double(f64::INFINITY),
            Bson::String(String::new()),
            Bson::String("a".into()),
            Bson::String("a\0".into()),
            Bson::String("a\0b".into()),
            Bson::String("ab".into()),
            Bson::String("b".into()),
            Bson::String("\u{e9}".into()),
            Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            Bson::ObjectId(ObjectId::from_bytes([1; 12])),
            Bson::Boolean(false),
            Bson::Boolean(true),
            Bson::DateTime(DateTime::from_millis(-1)),
            Bson::DateTime(DateTime::from_millis(0)),
            Bson::DateTime(DateTime::from_millis(1)),
            Bson::MaxKey,
        ];
        let keys: Vec<Vec<u8>> = ordered.iter().cloned().map(key).collect();
        for (i, w) in keys.windows(2).enumerate() {
            assert!(w[0] < w[1], "{:?} !< {:?}", ordered[i], ordered[i + 1]);
        }
        // Equal values of different numeric types share a key, as MongoDB
        // treats them as equal; -0.0 equals 0.
        assert_eq!(key(Bson::Int32(7)), key(Bson::Double(7.0)));
        assert_eq!(key(Bson::Int64(7)), key(Bson::Int32(7)));
        assert_eq!(key(Bson::Double(-0.0)), key(Bson::Int32(0)));
        // Types without an order key here.
        let d = rawdoc! {"_id": {"a": 1}};
        assert!(order_key(d.get("_id").unwrap().unwrap()).is_none());
    }

    #[test]
    fn a_touch_dirties_the_range_that_holds_the_document() {
        // The bounds of one namespace as the cut makes them, and where
        // events land: an id equal to a bound is in that bound's range.
        let ns = Namespace::new("d", "c");
        let bound = |v: Bson| {
            let mut b = ns_prefix(&ns);
            b.extend_from_slice(&key(v));
            b
        };
        let bounds = [
            Vec::new(),
            ns_prefix(&ns),
            bound(Bson::Int32(10)),
            bound(Bson::String("m".into())),
        ];
        assert!(bounds.is_sorted());
        let range_of = |v: Bson| {
            let k = bound(v);
            bounds.partition_point(|b| *b <= k) - 1
        };
        assert_eq!(range_of(Bson::Int32(3)), 1);
        assert_eq!(range_of(Bson::Int64(10)), 2);
        assert_eq!(range_of(Bson::Double(10.5)), 2);
        assert_eq!(range_of(Bson::String("a".into())), 2);
        assert_eq!(range_of(Bson::String("m".into())), 3);
        assert_eq!(range_of(Bson::ObjectId(ObjectId::new())), 3);
    }
}
