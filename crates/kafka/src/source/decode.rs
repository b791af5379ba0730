//! A record back into a change.
//!
//! A Kafka source reads two kinds of events, chosen on its URL because the
//! route's data model is fixed before any record is read:
//!
//! - `events=etcd` (the default), key-value events: Ferry's envelope of an
//!   etcd source ([`crate::envelope`]). `after` holds `key`, `value` (text,
//!   or `{"base64": …}` for bytes that are not UTF-8) and `lease` (`null`,
//!   or `{"id", "ttl_s"}`). Keys leave the source's prefix behind:
//!   `source.name` is the upstream URL (`etcd://host/app`), and the
//!   change's key is what follows its prefix (`/a` for `app/a`), which a
//!   target roots under its own prefix, exactly as an etcd-to-etcd route
//!   does.
//! - `events=mongodb`, documents: Ferry's envelope of a MongoDB source
//!   (`after` a string of canonical extended JSON, the record key
//!   `{"db", "collection", "id"}` with the `_id` in canonical extended
//!   JSON), or the events of Debezium's MongoDB connector (`source.db`,
//!   `source.collection`, `after` a string of the document in the Java
//!   driver's strict JSON, the record key `{"id": "<relaxed JSON>"}`).
//!   Documents are parsed by the `bson` crate's extended JSON reader; the
//!   two legacy forms of strict JSON it does not read (`$binary` with
//!   `$type`, `$regex` with `$options`) are rewritten into their canonical
//!   form first. A Debezium delete names its `_id` only in relaxed JSON,
//!   where a 64-bit integer reads back as a 32-bit one: the event key of
//!   a Debezium document therefore holds an integral `_id` as a 64-bit
//!   integer, for its puts and its deletes alike, so both name the same
//!   document (MongoDB matches `_id`s of both widths by value; the
//!   document itself keeps its own type).
//!
//! - `events=vault`, versioned secrets: Ferry's envelope of a Vault source,
//!   the record key `{"path"}` (relative to the source's path), `after`
//!   `{"version", "data", "metadata"}` with every field of the version's
//!   metadata, so a Vault target gets the same versions in the same states
//!   with the same settings.
//! - `events=file` (one JSON document) and `events=dir` (a directory of
//!   them): Ferry's envelope of a file source, the record key `{"path",
//!   "key"}`, `after` the document as JSON (`{"base64"}` for bytes that
//!   are not). A document goes back as its JSON, compact: the topic keeps
//!   no formatting, so a target that keeps bytes (an etcd key) gets JSON
//!   equal to the file, not the file's bytes.
//!
//! `op` is `r`, `c`, `u` or `d`, bare or inside a JSON converter's
//! `{"schema", "payload"}` wrapper; a record without a value is a delete's
//! tombstone and carries nothing more.

use bson::{Bson, RawBson, RawDocumentBuf};
use ferry_connect::{doc_key, DataModel, Namespace};
use ferry_core::{Op, StoreMeta, StoreUrl, Value as EventValue};
use serde_json::Value;
use std::collections::HashMap;

/// Which events a Kafka source reads (`?events=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Events {
    /// An etcd source's key-value events.
    #[default]
    Etcd,
    /// A MongoDB source's documents, Ferry's or Debezium's.
    Mongodb,
    /// A Vault source's versioned secrets.
    Vault,
    /// A JSON file's document.
    File,
    /// A directory's documents.
    Dir,
}

/// Every kind, for hints.
pub const ALL_EVENTS: [Events; 5] = [
    Events::Etcd,
    Events::Mongodb,
    Events::Vault,
    Events::File,
    Events::Dir,
];

impl Events {
    /// From the URL's `events` parameter.
    pub fn from_param(param: Option<&str>) -> Result<Self, String> {
        match param {
            None | Some("etcd") => Ok(Events::Etcd),
            Some("mongodb") => Ok(Events::Mongodb),
            Some("vault") => Ok(Events::Vault),
            Some("file") => Ok(Events::File),
            Some("dir") => Ok(Events::Dir),
            Some(other) => Err(format!(
                "`events={other}` is not one this build reads: give events=etcd (the default: key-value events of an etcd source), mongodb (documents, from Ferry or Debezium's MongoDB connector), vault (versioned secrets), file (one JSON document) or dir (a directory of documents)"
            )),
        }
    }

    pub fn model(self) -> DataModel {
        match self {
            Events::Etcd => DataModel::KeyValue,
            Events::Mongodb => DataModel::Documents,
            Events::Vault => DataModel::Secrets,
            Events::File => DataModel::Document,
            Events::Dir => DataModel::Files,
        }
    }

    /// The URL parameter that reads these events.
    pub fn param(self) -> &'static str {
        match self {
            Events::Etcd => "events=etcd",
            Events::Mongodb => "events=mongodb",
            Events::Vault => "events=vault",
            Events::File => "events=file",
            Events::Dir => "events=dir",
        }
    }

    /// Words for the pre-check's line.
    pub fn describe(self) -> &'static str {
        match self {
            Events::Etcd => "etcd key-value events",
            Events::Mongodb => "MongoDB document events",
            Events::Vault => "Vault secret version events",
            Events::File => "JSON document events",
            Events::Dir => "directory document events",
        }
    }
}

/// What one record says.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// `key` (an etcd key below the upstream prefix, or a document's event
    /// key) holds `value` (the bytes, or the document as BSON).
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        /// An etcd lease, or the document's namespace.
        meta: StoreMeta,
        /// The source's own clock, Unix milliseconds (0 when it has none).
        ts_ms: u64,
    },
    /// `key` was deleted.
    Delete {
        key: Vec<u8>,
        meta: StoreMeta,
        ts_ms: u64,
    },
    /// A delete's tombstone: nothing to apply.
    Tombstone,
}

impl Change {
    /// The change as a journal event's key, operation and source time;
    /// `None` for a tombstone, which applies nothing.
    pub fn into_op(self) -> Option<(Vec<u8>, Op, u64)> {
        match self {
            Change::Tombstone => None,
            Change::Put {
                key,
                value,
                meta,
                ts_ms,
            } => Some((
                key,
                Op::Put {
                    value: EventValue::Plain(value),
                    meta,
                },
                ts_ms,
            )),
            Change::Delete { key, meta, ts_ms } => Some((key, Op::Delete { meta }, ts_ms)),
        }
    }
}

/// An etcd lease as (id, TTL in seconds when captured), from its meta.
pub fn lease(meta: &StoreMeta) -> Option<(i64, i64)> {
    match meta {
        StoreMeta::Etcd {
            lease_id,
            lease_ttl_s,
        } => Some((*lease_id, *lease_ttl_s)),
        _ => None,
    }
}

/// Decodes records, remembering each upstream URL's prefix.
#[derive(Default)]
pub struct Decoder {
    events: Events,
    prefixes: HashMap<String, String>,
    record_key: Option<Value>,
}

impl Decoder {
    pub fn new(events: Events) -> Self {
        Decoder {
            events,
            ..Default::default()
        }
    }

    /// The change a record's value holds, or why it holds none (a phrase:
    /// the caller names the partition and offset).
    pub fn decode(&mut self, payload: Option<&[u8]>) -> Result<Change, String> {
        let Some(bytes) = payload else {
            return Ok(Change::Tombstone);
        };
        let v = unwrap_payload(
            serde_json::from_slice(bytes).map_err(|e| format!("the value is not JSON ({e})"))?,
        );
        let op = v
            .get("op")
            .and_then(Value::as_str)
            .ok_or("the value has no `op`, so it is not a change event")?
            .to_string();
        if !matches!(op.as_str(), "r" | "c" | "u" | "d") {
            return Err(format!("`op` is `{op}`, not one of r, c, u, d"));
        }
        let source = v.get("source").ok_or("the event has no `source`")?;
        let connector = source.get("connector").and_then(Value::as_str);
        let kind = source.get("kind").and_then(Value::as_str).unwrap_or("");
        let events = match (connector, kind) {
            (Some("mongodb"), _) | (_, "mongodb") => Events::Mongodb,
            (_, "etcd") => Events::Etcd,
            (_, "vault") => Events::Vault,
            // A file and a directory are both `file` sources.
            (_, "file") if matches!(self.events, Events::File | Events::Dir) => self.events,
            (_, "file") => Events::File,
            _ => {
                return Err(format!(
                    "the event comes from {} source; a Kafka source reads the events of an etcd, MongoDB, Vault or file source (Ferry's, or those of Debezium's MongoDB connector)",
                    if kind.is_empty() { "an unnamed".to_string() } else { format!("a `{kind}`") }
                ))
            }
        };
        if events != self.events {
            return Err(format!(
                "the topic holds {}: read it with `&{}` on the source URL, into a target that takes {}",
                events.describe(),
                events.param(),
                events.model().describe()
            ));
        }
        let ts_ms = source.get("ts_ms").and_then(Value::as_u64).unwrap_or(0);
        match (events, connector) {
            (Events::Etcd, _) => self.key_value(&v, &op, ts_ms),
            (Events::Mongodb, Some("mongodb")) => self.debezium_document(&v, &op, ts_ms),
            (Events::Mongodb, _) => self.ferry_document(&v, &op, ts_ms),
            (Events::Vault, _) => self.secret_version(&v, &op, ts_ms),
            (Events::File | Events::Dir, _) => self.file_document(&v, &op, ts_ms),
        }
    }

    /// The record key as JSON, used by deletes whose envelope does not
    /// repeat it; set before each [`Self::decode`].
    pub fn set_record_key(&mut self, key: Option<&[u8]>) {
        self.record_key = key
            .and_then(|k| serde_json::from_slice::<Value>(k).ok())
            .map(unwrap_payload);
    }

    fn key_value(&mut self, v: &Value, op: &str, ts_ms: u64) -> Result<Change, String> {
        let name = v
            .pointer("/source/name")
            .and_then(Value::as_str)
            .ok_or("the event's `source` has no `name`")?;
        let prefix = self.prefix(name)?;
        let key = |full: Option<&str>| -> Result<Vec<u8>, String> {
            let full = full.ok_or("the event names no key")?;
            full.strip_prefix(prefix.as_str())
                .map(|s| s.as_bytes().to_vec())
                .ok_or_else(|| format!("key `{full}` is not under the prefix of {name}"))
        };
        if op == "d" {
            // A delete's `after` is null: its key is in `before` where
            // the producer gives it, else in the record key (Ferry's).
            let k = v.pointer("/before/key").and_then(Value::as_str);
            let from_record = self.record_key.as_ref().and_then(|k| k.get("key"));
            return Ok(Change::Delete {
                key: key(k.or(from_record.and_then(Value::as_str)))?,
                meta: StoreMeta::None,
                ts_ms,
            });
        }
        let after = v
            .get("after")
            .filter(|a| a.is_object())
            .ok_or_else(|| format!("a `{op}` event has no `after`"))?;
        let value = match after.get("value") {
            Some(Value::String(s)) => s.as_bytes().to_vec(),
            Some(Value::Object(o)) => {
                let b = o
                    .get("base64")
                    .and_then(Value::as_str)
                    .ok_or("`after.value` is an object without `base64`")?;
                base64_decode(b)?
            }
            _ => return Err("`after.value` is neither text nor {\"base64\": …}".into()),
        };
        let meta = match after.get("lease") {
            None | Some(Value::Null) => StoreMeta::None,
            Some(l) => StoreMeta::Etcd {
                lease_id: l.get("id").and_then(Value::as_i64).unwrap_or(0),
                lease_ttl_s: l
                    .get("ttl_s")
                    .and_then(Value::as_i64)
                    .ok_or("`after.lease` has no `ttl_s`")?,
            },
        };
        Ok(Change::Put {
            key: key(after.get("key").and_then(Value::as_str))?,
            value,
            meta,
            ts_ms,
        })
    }

    /// Ferry's envelope of a MongoDB source.
    fn ferry_document(&mut self, v: &Value, op: &str, ts_ms: u64) -> Result<Change, String> {
        let rk = self
            .record_key
            .as_ref()
            .ok_or("the record has no JSON key `{\"db\", \"collection\", \"id\"}`")?;
        let text = |f: &str| -> Result<String, String> {
            rk.get(f)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("the record key has no `{f}`"))
        };
        let ns = Namespace::new(text("db")?, text("collection")?);
        if op == "d" {
            let id = rk.get("id").ok_or("the record key has no `id`")?;
            let id = Bson::try_from(id.clone())
                .map_err(|e| format!("the record key's `id` is not extended JSON ({e})"))?;
            return Ok(delete(&ns, &id, ts_ms));
        }
        let doc = document(v, op, false)?;
        put(ns, doc, false, ts_ms)
    }

    /// An event of Debezium's MongoDB connector.
    fn debezium_document(&mut self, v: &Value, op: &str, ts_ms: u64) -> Result<Change, String> {
        let field = |f: &str| -> Result<String, String> {
            v.pointer(&format!("/source/{f}"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("the event's `source` has no `{f}`"))
        };
        let ns = Namespace::new(field("db")?, field("collection")?);
        if op == "d" {
            let id = self
                .record_key
                .as_ref()
                .and_then(|k| k.get("id"))
                .and_then(Value::as_str)
                .ok_or("a delete's record key has no `id`")?;
            let id: Value = serde_json::from_str(id)
                .map_err(|e| format!("the record key's `id` is not JSON ({e})"))?;
            let id = Bson::try_from(legacy(id))
                .map_err(|e| format!("the record key's `id` is not extended JSON ({e})"))?;
            return Ok(delete(&ns, &widen(id), ts_ms));
        }
        let doc = document(v, op, true)?;
        put(ns, doc, true, ts_ms)
    }

    /// A text field of the record key.
    fn record_key_field(&self, f: &str) -> Result<String, String> {
        self.record_key
            .as_ref()
            .and_then(|k| k.get(f))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("the record key has no `{f}`"))
    }

    /// Ferry's envelope of a Vault source: one version of a secret.
    fn secret_version(&mut self, v: &Value, op: &str, ts_ms: u64) -> Result<Change, String> {
        let key = self.record_key_field("path")?.into_bytes();
        if op == "d" {
            return Ok(Change::Delete {
                key,
                meta: StoreMeta::None,
                ts_ms,
            });
        }
        let after = v
            .get("after")
            .filter(|a| a.is_object())
            .ok_or_else(|| format!("a `{op}` event has no `after`"))?;
        let data = after
            .get("data")
            .filter(|d| d.is_object())
            .ok_or("`after.data` is not a JSON object")?;
        let meta: ferry_core::VaultVersionMeta = serde_json::from_value(
            after
                .get("metadata")
                .cloned()
                .ok_or("`after` has no `metadata` (a Vault event of this build carries it)")?,
        )
        .map_err(|e| format!("`after.metadata` is not a version's metadata ({e})"))?;
        let version = after.get("version").and_then(Value::as_u64);
        if version != Some(meta.version) {
            return Err("`after.version` and `after.metadata.version` differ".into());
        }
        Ok(Change::Put {
            key,
            value: serde_json::to_vec(data).expect("JSON serialises"),
            meta: StoreMeta::Vault(Box::new(meta)),
            ts_ms,
        })
    }

    /// Ferry's envelope of a file or directory source.
    fn file_document(&mut self, v: &Value, op: &str, ts_ms: u64) -> Result<Change, String> {
        let key = self.record_key_field("key")?.into_bytes();
        if op == "d" {
            return Ok(Change::Delete {
                key,
                meta: StoreMeta::None,
                ts_ms,
            });
        }
        let value = match v.get("after") {
            None | Some(Value::Null) => return Err(format!("a `{op}` event has no `after`")),
            Some(Value::Object(o)) if o.len() == 1 && o.contains_key("base64") => {
                base64_decode(o["base64"].as_str().ok_or("`after.base64` is not text")?)?
            }
            Some(doc) => serde_json::to_vec(doc).expect("JSON serialises"),
        };
        Ok(Change::Put {
            key,
            value,
            meta: StoreMeta::None,
            ts_ms,
        })
    }

    fn prefix(&mut self, name: &str) -> Result<String, String> {
        if let Some(p) = self.prefixes.get(name) {
            return Ok(p.clone());
        }
        let p = match StoreUrl::parse(name) {
            Ok(StoreUrl::Etcd { prefix, .. }) => prefix,
            _ => return Err(format!("`source.name` {name} is not an etcd URL")),
        };
        self.prefixes.insert(name.to_string(), p.clone());
        Ok(p)
    }
}

/// A JSON converter's `{"schema", "payload"}` wrapper, looked through.
fn unwrap_payload(mut v: Value) -> Value {
    if v.get("op").is_none() && v.get("schema").is_some() {
        if let Some(p) = v.get_mut("payload") {
            return p.take();
        }
    }
    v
}

/// The document an `r`, `c` or `u` event's `after` string holds.
fn document(v: &Value, op: &str, debezium: bool) -> Result<bson::Document, String> {
    let text = match v.get("after") {
        Some(Value::String(s)) => s,
        Some(Value::Null) | None if debezium && op == "u" => {
            return Err("an update event carries no full document in `after`: set the Debezium connector's `capture.mode` to `change_streams_update_full`".into())
        }
        Some(Value::Null) | None => return Err(format!("a `{op}` event has no `after`")),
        Some(_) => {
            return Err("`after` is not a string of the document in extended JSON".into())
        }
    };
    let json: Value =
        serde_json::from_str(text).map_err(|e| format!("`after` is not JSON ({e})"))?;
    match Bson::try_from(legacy(json)) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(_) => Err("`after` is not a document".into()),
        Err(e) => Err(format!("`after` is not extended JSON ({e})")),
    }
}

fn put(ns: Namespace, doc: bson::Document, debezium: bool, ts_ms: u64) -> Result<Change, String> {
    let id = doc.get("_id").cloned().ok_or("the document has no `_id`")?;
    let id = if debezium { widen(id) } else { id };
    let raw = RawDocumentBuf::from_document(&doc)
        .map_err(|e| format!("the document does not encode as BSON ({e})"))?;
    let key = event_key(&ns, &id)?;
    Ok(Change::Put {
        key,
        value: raw.into_bytes(),
        meta: StoreMeta::Mongo {
            db: ns.db,
            collection: ns.coll,
        },
        ts_ms,
    })
}

fn delete(ns: &Namespace, id: &Bson, ts_ms: u64) -> Change {
    match event_key(ns, id) {
        Ok(key) => Change::Delete {
            key,
            meta: StoreMeta::Mongo {
                db: ns.db.clone(),
                collection: ns.coll.clone(),
            },
            ts_ms,
        },
        // An `_id` that does not encode cannot name a stored document.
        Err(_) => Change::Tombstone,
    }
}

fn event_key(ns: &Namespace, id: &Bson) -> Result<Vec<u8>, String> {
    let raw = RawBson::try_from(id.clone()).map_err(|e| format!("bad `_id` ({e})"))?;
    Ok(doc_key::encode(ns, raw.as_raw_bson_ref()))
}

/// An integral `_id` as a 64-bit integer (see the module doc).
fn widen(id: Bson) -> Bson {
    match id {
        Bson::Int32(n) => Bson::Int64(i64::from(n)),
        other => other,
    }
}

/// The Java driver's strict-mode forms the `bson` crate does not read,
/// rewritten into canonical extended JSON: `{"$binary": b64, "$type":
/// hex}` and `{"$regex": pattern, "$options": flags}`.
fn legacy(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            if m.len() == 2 {
                if let (Some(Value::String(b)), Some(Value::String(t))) =
                    (m.get("$binary"), m.get("$type"))
                {
                    return serde_json::json!({"$binary": {"base64": b, "subType": t}});
                }
                if let (Some(Value::String(p)), Some(Value::String(o))) =
                    (m.get("$regex"), m.get("$options"))
                {
                    return serde_json::json!({"$regularExpression": {"pattern": p, "options": o}});
                }
            }
            Value::Object(m.into_iter().map(|(k, v)| (k, legacy(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(legacy).collect()),
        other => other,
    }
}

fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("`after.value.base64` is not base64 ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{envelope, Origin};
    use ferry_connect::Rendered;
    use ferry_core::{Event, Op, Position, ShardId, StoreMeta};
    use serde_json::json;

    fn record(key: &str, after: Option<Value>, snapshot: bool) -> (Vec<u8>, Vec<u8>) {
        let e = Event {
            shard: ShardId(1),
            seq: 4,
            position: Position::at(9),
            key: key.as_bytes().to_vec(),
            op: Op::Delete {
                meta: StoreMeta::None,
            },
            source_ts_ms: 0,
            capture_ts_ms: 0,
        };
        let k = json!({ "key": key });
        let deleted = after.is_none();
        let v = envelope(
            &e,
            Rendered {
                key: k.clone(),
                after,
                created: None,
            },
            deleted,
            &Origin {
                kind: "etcd",
                name: "etcd://127.0.0.1:2379/app",
                snapshot,
                ts_ms: 1,
            },
        );
        (
            serde_json::to_vec(&k).unwrap(),
            serde_json::to_vec(&v).unwrap(),
        )
    }

    fn decode(d: &mut Decoder, (k, v): &(Vec<u8>, Vec<u8>)) -> Result<Change, String> {
        d.set_record_key(Some(k));
        d.decode(Some(v))
    }

    #[test]
    fn ferry_envelopes_become_changes_below_the_prefix() {
        let mut d = Decoder::default();
        let put = record(
            "app/a",
            Some(json!({"key": "app/a", "value": "1", "lease": null})),
            true,
        );
        assert_eq!(
            decode(&mut d, &put),
            Ok(Change::Put {
                key: b"/a".to_vec(),
                value: b"1".to_vec(),
                meta: StoreMeta::None,
                ts_ms: 0
            })
        );
        let bytes = record(
            "app/b",
            Some(
                json!({"key": "app/b", "value": {"base64": "/wA="}, "lease": {"id": 7, "ttl_s": 30}}),
            ),
            false,
        );
        assert_eq!(
            decode(&mut d, &bytes),
            Ok(Change::Put {
                key: b"/b".to_vec(),
                value: vec![0xff, 0],
                meta: StoreMeta::Etcd {
                    lease_id: 7,
                    lease_ttl_s: 30
                },
                ts_ms: 0
            })
        );
        let del = record("app/a", None, false);
        assert_eq!(
            decode(&mut d, &del),
            Ok(Change::Delete {
                key: b"/a".to_vec(),
                meta: StoreMeta::None,
                ts_ms: 0
            })
        );
        assert_eq!(d.decode(None), Ok(Change::Tombstone));
        // A JSON converter's schema wrapper is looked through.
        let wrapped = serde_json::to_vec(&json!({
            "schema": {},
            "payload": serde_json::from_slice::<Value>(&put.1).unwrap()
        }))
        .unwrap();
        d.set_record_key(Some(&put.0));
        assert!(matches!(d.decode(Some(&wrapped)), Ok(Change::Put { .. })));
    }

    #[test]
    fn other_records_are_refused_with_the_reason() {
        let mut d = Decoder::default();
        let why = |d: &mut Decoder, v: &[u8]| d.decode(Some(v)).unwrap_err();
        assert!(why(&mut d, b"not json").contains("not JSON"));
        assert!(why(&mut d, br#"{"a": 1}"#).contains("no `op`"));
        assert!(why(
            &mut d,
            br#"{"op": "x", "source": {"kind": "etcd", "name": "etcd://h/app"}}"#
        )
        .contains("not one of r, c, u, d"));
        assert!(why(
            &mut d,
            br#"{"op": "c", "after": {}, "source": {"kind": "mongodb", "name": "m"}}"#
        )
        .contains("&events=mongodb"));
        assert!(why(
            &mut d,
            br#"{"op": "c", "after": {}, "source": {"kind": "vault", "name": "v"}}"#
        )
        .contains("&events=vault"));
        assert!(why(
            &mut d,
            br#"{"op": "c", "after": {}, "source": {"kind": "bolt", "name": "b"}}"#
        )
        .contains("a `bolt` source"));
        assert!(why(
            &mut d,
            br#"{"op": "c", "after": {"key": "other/a", "value": "1"}, "source": {"kind": "etcd", "name": "etcd://h/app"}}"#
        )
        .contains("not under the prefix"));
        assert!(why(
            &mut d,
            br#"{"op": "u", "after": null, "source": {"kind": "etcd", "name": "etcd://h/app"}}"#
        )
        .contains("no `after`"));
    }

    fn doc_of(change: &Change) -> (Namespace, bson::Document, bson::Document) {
        let Change::Put { key, value, .. } = change else {
            panic!("{change:?} is not a put")
        };
        let (ns, filter) = doc_key::decode(key).unwrap();
        let doc = RawDocumentBuf::from_bytes(value.clone())
            .unwrap()
            .to_document()
            .unwrap();
        (ns, filter.to_document().unwrap(), doc)
    }

    #[test]
    fn ferry_mongodb_envelopes_keep_every_bson_type_and_field_order() {
        use bson::doc;
        let original = doc! {
            "_id": 5i64, "z": 1i32, "a": 2.0f64, "n": 7i64,
            "when": bson::DateTime::from_millis(1_700_000_000_123),
            "bin": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0, 255] },
            "nested": {"list": [1i32, "two", {"x": bson::Bson::Null}]},
        };
        let after = Bson::Document(original.clone())
            .into_canonical_extjson()
            .to_string();
        let id = Bson::Int64(5).into_canonical_extjson();
        let key = json!({"db": "app", "collection": "users", "id": id});
        let value = json!({"before": null, "after": after, "op": "r",
            "source": {"connector": "ferry", "kind": "mongodb", "name": "mongodb://h/app"}});
        let mut d = Decoder::new(Events::Mongodb);
        d.set_record_key(Some(&serde_json::to_vec(&key).unwrap()));
        let put = d
            .decode(Some(&serde_json::to_vec(&value).unwrap()))
            .unwrap();
        let (ns, filter, doc) = doc_of(&put);
        assert_eq!(ns, Namespace::new("app", "users"));
        assert_eq!(filter, doc! {"_id": 5i64});
        assert_eq!(doc, original, "same values, types and field order");
        let del = json!({"before": null, "after": null, "op": "d",
            "source": {"connector": "ferry", "kind": "mongodb", "name": "mongodb://h/app"}});
        let Change::Delete { key: dk, .. } =
            d.decode(Some(&serde_json::to_vec(&del).unwrap())).unwrap()
        else {
            panic!("not a delete")
        };
        let Change::Put { key: pk, .. } = put else {
            unreachable!()
        };
        assert_eq!(dk, pk, "a delete names the document its puts named");
        // An etcd route does not read documents.
        let mut kv = Decoder::default();
        kv.set_record_key(Some(&serde_json::to_vec(&key).unwrap()));
        assert!(kv
            .decode(Some(&serde_json::to_vec(&value).unwrap()))
            .unwrap_err()
            .contains("&events=mongodb"));
    }

    #[test]
    fn debezium_mongodb_events_in_strict_json_become_documents() {
        use bson::doc;
        // As Debezium's MongoDB connector writes them: the Java driver's
        // strict mode in `after`, the `_id` in relaxed JSON in the key.
        let after = r#"{"_id": {"$numberLong": "1004"}, "first_name": "Anne", "n": 3, "score": 1.0, "big": {"$numberLong": "9000000000"}, "at": {"$date": 1700000000123}, "oid": {"$oid": "596e275826f08b2730779e1f"}, "bin": {"$binary": "AP8=", "$type": "00"}, "re": {"$regex": "^a", "$options": "i"}}"#;
        let value = json!({"schema": {}, "payload": {"after": after, "op": "c",
            "source": {"version": "2.5.0.Final", "connector": "mongodb", "name": "dbserver1",
                       "db": "inventory", "collection": "customers", "ts_ms": 1700000000000u64}}});
        let key = json!({"schema": {}, "payload": {"id": "1004"}});
        let mut d = Decoder::new(Events::Mongodb);
        d.set_record_key(Some(&serde_json::to_vec(&key).unwrap()));
        let put = d
            .decode(Some(&serde_json::to_vec(&value).unwrap()))
            .unwrap();
        let (ns, filter, doc) = doc_of(&put);
        assert_eq!(ns, Namespace::new("inventory", "customers"));
        assert_eq!(filter, doc! {"_id": 1004i64});
        assert_eq!(doc.get("_id"), Some(&Bson::Int64(1004)));
        assert_eq!(doc.get("n"), Some(&Bson::Int32(3)));
        assert_eq!(doc.get("score"), Some(&Bson::Double(1.0)));
        assert_eq!(doc.get("big"), Some(&Bson::Int64(9_000_000_000)));
        assert_eq!(
            doc.get("at"),
            Some(&Bson::DateTime(bson::DateTime::from_millis(
                1_700_000_000_123
            )))
        );
        assert!(matches!(doc.get("bin"), Some(Bson::Binary(b)) if b.bytes == [0, 255]));
        assert!(matches!(doc.get("re"), Some(Bson::RegularExpression(r)) if r.pattern == "^a"));
        let keys: Vec<&str> = doc.keys().map(String::as_str).collect();
        assert_eq!(keys[..3], ["_id", "first_name", "n"], "field order kept");
        let del = json!({"payload": {"after": null, "op": "d", "source": value["payload"]["source"].clone()}, "schema": {}});
        let Change::Delete { key: dk, .. } =
            d.decode(Some(&serde_json::to_vec(&del).unwrap())).unwrap()
        else {
            panic!("not a delete")
        };
        let Change::Put { key: pk, .. } = put else {
            unreachable!()
        };
        assert_eq!(
            dk, pk,
            "the relaxed `_id` of the delete names the same document"
        );
        let update =
            json!({"after": null, "op": "u", "source": value["payload"]["source"].clone()});
        assert!(d
            .decode(Some(&serde_json::to_vec(&update).unwrap()))
            .unwrap_err()
            .contains("change_streams_update_full"));
    }
}
