//! A record of Ferry's envelope back into a change.
//!
//! The record's value is the envelope [`crate::envelope`] writes, bare or
//! inside a JSON converter's `{"schema", "payload"}` wrapper. This build
//! reads key-value events (those of an etcd source): `after` holds `key`,
//! `value` (text, or `{"base64": …}` for bytes that are not UTF-8) and
//! `lease` (`null`, or `{"id", "ttl_s"}`); `op` is `r`, `c`, `u` or `d`; a
//! record without a value is a delete's tombstone and carries nothing more.
//!
//! Keys leave the source's prefix behind: `source.name` is the upstream
//! URL (`etcd://host/app`), and the change's key is what follows its prefix
//! (`/a` for `app/a`), which a target roots under its own prefix, exactly as
//! an etcd-to-etcd route does.

use ferry_core::{Op, StoreMeta, StoreUrl, Value as EventValue};
use serde_json::Value;
use std::collections::HashMap;

/// What one record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `key` (below the upstream prefix) holds `value`, leased or not.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        /// (source lease id, TTL in seconds when captured).
        lease: Option<(i64, i64)>,
        /// The source's own clock, Unix milliseconds (0 when it has none).
        ts_ms: u64,
    },
    /// `key` was deleted.
    Delete { key: Vec<u8>, ts_ms: u64 },
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
                lease,
                ts_ms,
            } => {
                let meta = match lease {
                    Some((lease_id, lease_ttl_s)) => StoreMeta::Etcd {
                        lease_id,
                        lease_ttl_s,
                    },
                    None => StoreMeta::None,
                };
                let value = EventValue::Plain(value);
                Some((key, Op::Put { value, meta }, ts_ms))
            }
            Change::Delete { key, ts_ms } => Some((
                key,
                Op::Delete {
                    meta: StoreMeta::None,
                },
                ts_ms,
            )),
        }
    }
}

/// Decodes records, remembering each upstream URL's prefix.
#[derive(Default)]
pub struct Decoder {
    prefixes: HashMap<String, String>,
    record_key: Option<String>,
}

impl Decoder {
    /// The change a record's value holds, or why it holds none (a phrase:
    /// the caller names the partition and offset).
    pub fn decode(&mut self, payload: Option<&[u8]>) -> Result<Change, String> {
        let Some(bytes) = payload else {
            return Ok(Change::Tombstone);
        };
        let mut v: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("the value is not JSON ({e})"))?;
        if v.get("op").is_none() {
            if let Some(p) = v.get_mut("payload") {
                v = p.take();
            }
        }
        let op = v
            .get("op")
            .and_then(Value::as_str)
            .ok_or("the value has no `op`, so it is not a change event")?;
        let source = v.get("source").ok_or("the event has no `source`")?;
        let kind = source.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind != "etcd" {
            return Err(format!(
                "the event comes from {} source; a Kafka source reads the key-value events of an etcd source in this build",
                if kind.is_empty() { "an unnamed".to_string() } else { format!("a `{kind}`") }
            ));
        }
        let name = source
            .get("name")
            .and_then(Value::as_str)
            .ok_or("the event's `source` has no `name`")?;
        let prefix = self.prefix(name)?;
        let ts_ms = source.get("ts_ms").and_then(Value::as_u64).unwrap_or(0);
        let key = |full: Option<&str>| -> Result<Vec<u8>, String> {
            let full = full.ok_or("the event names no key")?;
            full.strip_prefix(prefix.as_str())
                .map(|s| s.as_bytes().to_vec())
                .ok_or_else(|| format!("key `{full}` is not under the prefix of {name}"))
        };
        match op {
            "d" => {
                // A delete's `after` is null: its key is in `before` where
                // the producer gives it, else in the record key (Ferry's).
                let k = v.pointer("/before/key").and_then(Value::as_str);
                Ok(Change::Delete {
                    key: key(k.or(self.record_key.as_deref()))?,
                    ts_ms,
                })
            }
            "r" | "c" | "u" => {
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
                let lease = match after.get("lease") {
                    None | Some(Value::Null) => None,
                    Some(l) => Some((
                        l.get("id").and_then(Value::as_i64).unwrap_or(0),
                        l.get("ttl_s")
                            .and_then(Value::as_i64)
                            .ok_or("`after.lease` has no `ttl_s`")?,
                    )),
                };
                Ok(Change::Put {
                    key: key(after.get("key").and_then(Value::as_str))?,
                    value,
                    lease,
                    ts_ms,
                })
            }
            other => Err(format!("`op` is `{other}`, not one of r, c, u, d")),
        }
    }

    /// The record key's `key` field, used by deletes whose envelope does not
    /// repeat it; set before each [`Self::decode`].
    pub fn set_record_key(&mut self, key: Option<&[u8]>) {
        self.record_key = key
            .and_then(|k| serde_json::from_slice::<Value>(k).ok())
            .and_then(|k| k.get("key").and_then(Value::as_str).map(str::to_string));
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
                lease: None,
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
                lease: Some((7, 30)),
                ts_ms: 0
            })
        );
        let del = record("app/a", None, false);
        assert_eq!(
            decode(&mut d, &del),
            Ok(Change::Delete {
                key: b"/a".to_vec(),
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
        .contains("`mongodb` source"));
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
}
