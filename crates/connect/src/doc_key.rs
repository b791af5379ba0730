//! The documents model's event keys: canonical bytes of (database, collection, `_id`).
//!
//! Layout: `db 0x00 coll 0x00 element`, where `element` is the BSON
//! element `_id` exactly as in a document (type byte, `"_id\0"`, value).
//! Database and collection names cannot contain NUL, so the split is
//! unambiguous; the `_id` keeps its exact BSON type, so the key of a
//! document is the same whether it came from a collection scan or from a
//! change event's `documentKey`.

use crate::Namespace;
use bson::{RawBsonRef, RawDocument, RawDocumentBuf};

/// The key of the document with `id` in `ns`.
pub fn encode(ns: &Namespace, id: RawBsonRef<'_>) -> Vec<u8> {
    let mut doc = RawDocumentBuf::new();
    doc.append("_id", id.to_raw_bson());
    let bytes = doc.as_bytes();
    // Strip the document's length prefix and its final NUL: the element.
    let element = &bytes[4..bytes.len() - 1];
    let mut k = Vec::with_capacity(ns.db.len() + ns.coll.len() + 2 + element.len());
    k.extend_from_slice(ns.db.as_bytes());
    k.push(0);
    k.extend_from_slice(ns.coll.as_bytes());
    k.push(0);
    k.extend_from_slice(element);
    k
}

/// (namespace, `{_id: …}` filter document) of a key, or why it is not one.
pub fn decode(key: &[u8]) -> Result<(Namespace, RawDocumentBuf), String> {
    let mut parts = key.splitn(3, |b| *b == 0);
    let (Some(db), Some(coll), Some(element)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("not a MongoDB event key (database and collection missing)".into());
    };
    let ns = Namespace::new(
        std::str::from_utf8(db).map_err(|_| "database name is not UTF-8")?,
        std::str::from_utf8(coll).map_err(|_| "collection name is not UTF-8")?,
    );
    let len = i32::try_from(element.len() + 5).map_err(|_| "key too long")?;
    let mut bytes = Vec::with_capacity(element.len() + 5);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(element);
    bytes.push(0);
    let doc = RawDocumentBuf::from_bytes(bytes).map_err(|e| format!("bad _id element ({e})"))?;
    match doc.get("_id") {
        Ok(Some(_)) => Ok((ns, doc)),
        _ => Err("the key's element is not an _id".into()),
    }
}

/// A short human form of an `_id` for messages (`ObjectId("…")`, `42`, …).
pub fn id_text(filter: &RawDocument) -> String {
    match filter.get("_id") {
        Ok(Some(v)) => match v.to_raw_bson().try_into() {
            Ok(b) => {
                let b: bson::Bson = b;
                let s = b.to_string();
                s.chars().take(120).collect()
            }
            Err(_) => "?".into(),
        },
        _ => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{oid::ObjectId, rawdoc, Bson};

    #[test]
    fn round_trip_keeps_type() {
        let ns = Namespace::new("app", "a.b");
        for id in [
            Bson::Int32(7),
            Bson::Int64(7),
            Bson::Double(7.0),
            Bson::String("x\u{e9}".into()),
            Bson::ObjectId(ObjectId::new()),
        ] {
            let raw = bson::RawBson::try_from(id.clone()).unwrap();
            let k = encode(&ns, raw.as_raw_bson_ref());
            let (n, doc) = decode(&k).unwrap();
            assert_eq!(n, ns);
            let back: Bson = doc
                .get("_id")
                .unwrap()
                .unwrap()
                .to_raw_bson()
                .try_into()
                .unwrap();
            assert_eq!(back, id);
        }
        let a = encode(&ns, RawBsonRef::Int32(7));
        let b = encode(&ns, RawBsonRef::Int64(7));
        assert_ne!(a, b);
        let d = rawdoc! {"_id": {"a": 1, "b": [1, 2]}};
        let k = encode(&ns, d.get("_id").unwrap().unwrap());
        assert_eq!(decode(&k).unwrap().1, d);
        assert!(decode(b"nonul").is_err());
    }
}
