//! Each Cells service's Bolt layout into the MongoDB documents Cells v4
//! reads.
//!
//! One Bolt entry (bucket path, key, value) becomes at most one document.
//! Unlike Cells' own migrators, which insert with fresh random ids (a
//! re-run duplicates everything), every document here gets an `_id`
//! derived from its Bolt location alone, so:
//! - a re-run, or an event applied twice, replaces the same document;
//! - a Bolt delete becomes a delete of that `_id`, without the value.
//!
//! Shapes are Cells' Mongo DAO structs (reference 1c, and the Cells files
//! named in [`crate::gobson`]): the DAO's own wrapper fields (`ts`,
//! `ac_id`, `node_uuid`, …) with the protobuf struct beside them written by
//! the one rule of [`crate::gobson`]. Where the mapping must choose:
//! - **activities**: Bolt ids (`/activity-<seq>`) repeat in every box, and
//!   Cells purges and looks activities up by `ac_id` alone, so `ac_id` (and
//!   `object.id`) become `/activity-<uuid>`, the uuid a hash of the Bolt
//!   location: unique in the collection, the same on every run. `ts` is
//!   `object.updated` in nanoseconds (`published` when there is no
//!   `updated`, else 0).
//! - **markers** (`lastread`, `lastsent`): Bolt keeps the sequence of the
//!   user's inbox activity; Cells compares `timestamp` with `ts`, so the
//!   marker takes that activity's `ts`. The mapping names the activity
//!   ([`Mapped::ts_of`]); the caller fills the value in.
//! - **versions**: `ts` is Cells' insertion time, which Bolt does not keep;
//!   it is the ChangeLog's `MTime` in nanoseconds plus the Bolt sequence, so
//!   listing by `ts` keeps the Bolt order.
//! - **mailer**: `ts` (Cells' enqueue time, used for FIFO order) is the
//!   Bolt sequence, which keeps the order.
//!
//! An entry whose value Cells itself could not read (not JSON, not a
//! ChangeLog, a chat room of an unknown type, a field of the wrong type) is
//! a [`MapError`] naming the service, bucket path and key.
//!
//! Not mapped: Bleve indexes (search, logs, docstore's own index) — after
//! the cutover the operator runs `cells admin resync`; chat's `rooms`
//! top-level bucket (Cells creates it and never uses it); and
//! `configs-versions.db` (Cells keeps configuration history in etcd's
//! history of the `config` key; Ferry copies the current configuration).

use crate::gobson::{self, from_json, from_proto};
use crate::service::{MapOptions, Service};
use mongodb::bson::{doc, Bson, Document};
use serde_json::Value as Json;

/// One document's place, and its content (`None`: delete it).
#[derive(Clone, Debug, PartialEq)]
pub struct Mapped {
    pub collection: String,
    pub id: String,
    pub doc: Option<Document>,
    /// A marker: the `_id` (in the service's activities collection) of the
    /// activity whose `ts` belongs in the document's `timestamp`; see
    /// [`set_marker_ts`].
    pub ts_of: Option<String>,
}

/// Why an entry could not be mapped (one sentence, naming the entry).
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[error("{service} entry {path}: {reason}")]
pub struct MapError {
    pub service: &'static str,
    pub path: String,
    pub reason: String,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A big-endian sequence key (Bolt's `NextSequence`), as a number.
fn seq(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

fn seq_text(key: &[u8]) -> String {
    seq(key).map_or_else(|| text(key), |n| n.to_string())
}

/// The Bolt location as Ferry names it in messages: buckets and key.
pub fn location(buckets: &[Vec<u8>], key: &[u8]) -> String {
    let mut p: Vec<String> = buckets.iter().map(|b| text(b)).collect();
    p.push(seq_text(key));
    p.join("/")
}

/// `activity.OwnerType` of a Bolt bucket name.
fn owner_type(name: &[u8]) -> i32 {
    match name {
        b"USER" => 1,
        _ => 0,
    }
}

/// `chat.RoomType` names, by value (GLOBAL is 0, omitted from Bolt JSON).
const ROOM_TYPES: [&str; 5] = ["GLOBAL", "WORKSPACE", "USER", "NODE", "ANY"];

/// The `ac_id` of the activity at `location` (`<ownerType>/<owner>/<box>/<seq>`).
pub fn activity_id(location: &str) -> String {
    let h = blake3::hash(location.as_bytes());
    let b = h.as_bytes();
    let hex: String = b[..16].iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "/activity-{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A Timestamp sub-document in nanoseconds (`None` when null).
fn ts_ns(ts: Option<&Bson>) -> Option<i64> {
    let d = ts?.as_document()?;
    let s = d.get_i64("seconds").ok()?;
    let n = i64::from(d.get_i32("nanos").unwrap_or(0));
    Some(s.saturating_mul(1_000_000_000).saturating_add(n))
}

/// Sets a marker document's `timestamp` to the `ts` of the activity
/// [`Mapped::ts_of`] names (`None`: that activity does not exist; the
/// marker then counts every activity as unread, as Cells would for an
/// unknown marker).
pub fn set_marker_ts(doc: &mut Document, activity_ts: Option<i64>) {
    doc.insert("timestamp", activity_ts.unwrap_or(0));
}

/// JSON as Go's `map[string]interface{}` holds it (numbers are float64),
/// written by the Go codec: Cells' docstore `data`.
fn interface_bson(v: &Json) -> Bson {
    match v {
        Json::Null => Bson::Null,
        Json::Bool(b) => Bson::Boolean(*b),
        Json::Number(n) => Bson::Double(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Bson::String(s.clone()),
        Json::Array(a) => Bson::Array(a.iter().map(interface_bson).collect()),
        Json::Object(o) => Bson::Document(
            o.iter()
                .map(|(k, v)| (k.clone(), interface_bson(v)))
                .collect(),
        ),
    }
}

/// Maps one Bolt entry of `service`. `value` is `None` for a deleted key.
/// `Ok(None)`: the entry has no Mongo counterpart (see the module doc).
pub fn map(
    service: Service,
    opts: &MapOptions,
    buckets: &[Vec<u8>],
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<Option<Mapped>, MapError> {
    let err = |reason: String| MapError {
        service: service.name(),
        path: location(buckets, key),
        reason,
    };
    let json = || -> Result<Json, MapError> {
        let v = value.unwrap_or(b"null");
        serde_json::from_slice(v).map_err(|e| err(format!("the value is not JSON ({e})")))
    };
    let typed = |message: &str| -> Result<Document, MapError> {
        from_json(&gobson::message(message), &json()?).map_err(err)
    };
    let coll = |name: &str| opts.collection(service, name);
    let b: Vec<&[u8]> = buckets.iter().map(Vec::as_slice).collect();
    let out = |collection: String, id: String, build: &dyn Fn() -> Result<Document, MapError>| {
        Ok(Some(Mapped {
            collection,
            id,
            doc: match value {
                Some(_) => Some(build()?),
                None => None,
            },
            ts_of: None,
        }))
    };
    match (service, b.as_slice()) {
        (Service::Docstore, [store]) => {
            let Some(store_id) = store.strip_prefix(b"store-") else {
                return Ok(None);
            };
            let (store_id, doc_id) = (text(store_id), text(key));
            out(coll("documents"), format!("{store_id}/{doc_id}"), &|| {
                let v = typed("DocstoreDocument")?;
                let raw = v.get_str("data").unwrap_or("").to_string();
                // Cells: jsonx.Unmarshal into map[string]interface{}, else the string.
                let data = match serde_json::from_str::<Json>(&raw) {
                    Ok(j @ Json::Object(_)) => interface_bson(&j),
                    _ => Bson::String(raw.clone()),
                };
                Ok(doc! {
                    "store_id": &store_id,
                    "doc_id": &doc_id,
                    "owner": v.get_str("owner").unwrap_or(""),
                    "data": data,
                    "raw": raw,
                })
            })
        }
        (Service::Activity, [ot, owner, box_]) if matches!(*box_, b"inbox" | b"outbox") => {
            let (owner_id, box_name) = (text(owner), text(box_));
            let id = location(buckets, key);
            let ac_id = activity_id(&id);
            out(coll("activities"), id, &|| {
                let mut object = typed("ActivityObject")?;
                let ts = ts_ns(object.get("updated"))
                    .or_else(|| ts_ns(object.get("published")))
                    .unwrap_or(0);
                object.insert("id", &ac_id);
                Ok(doc! {
                    "owner_type": owner_type(ot),
                    "owner_id": &owner_id,
                    "box_name": &box_name,
                    "ts": ts,
                    "ac_id": &ac_id,
                    "object": object,
                })
            })
        }
        (Service::Activity, [ot, object_id, b"subscriptions"]) => {
            // Bolt: <ObjectType>/<ObjectId>/subscriptions/<UserId> (Cells' own
            // migrator swaps user and object; this does not).
            let (object_type, object_id, user) = (owner_type(ot), text(object_id), text(key));
            out(coll("subscriptions"), location(buckets, key), &|| {
                let events = json()?;
                if !events.is_array() && !events.is_null() {
                    return Err(err("the value is not a JSON array of event names".into()));
                }
                let sub = serde_json::json!({
                    "UserId": &user, "ObjectType": object_type, "ObjectId": &object_id, "Events": events,
                });
                from_json(&gobson::message("Subscription"), &sub).map_err(err)
            })
        }
        (Service::Activity, [ot, owner, box_]) if matches!(*box_, b"lastread" | b"lastsent") => {
            let (user, box_name) = (text(owner), text(box_));
            let mut m = out(coll("markers"), location(buckets, key), &|| {
                Ok(doc! { "box_name": &box_name, "user_id": &user, "timestamp": 0i64 })
            })?;
            if let (Some(m), Some(v)) = (m.as_mut(), value) {
                let n = seq(v).ok_or_else(|| {
                    err(format!(
                        "the value is {} bytes, not an 8-byte activity sequence",
                        v.len()
                    ))
                })?;
                let inbox = [ot.to_vec(), owner.to_vec(), b"inbox".to_vec()];
                m.ts_of = Some(location(&inbox, &n.to_be_bytes()));
            }
            Ok(m)
        }
        (Service::Chat, [b"messages", room_type, _object]) => {
            let rt = text(room_type);
            if !ROOM_TYPES.contains(&rt.as_str()) {
                return Err(err(format!(
                    "a chat room of unknown type `{rt}` (Cells v4 knows {})",
                    ROOM_TYPES.join(", ")
                )));
            }
            out(
                coll("rooms"),
                location(buckets, key).split_off("messages/".len()),
                &|| {
                    let d = typed("ChatRoom")?;
                    let t = d.get_i32("type").unwrap_or(-1);
                    if usize::try_from(t).map_or(true, |t| t >= ROOM_TYPES.len()) {
                        return Err(err(format!("a chat room of unknown type {t}")));
                    }
                    Ok(d)
                },
            )
        }
        (Service::Chat, [b"messages", room]) => {
            let room = text(room);
            out(
                coll("messages"),
                format!("{room}/{}", seq_text(key)),
                &|| {
                    let mut d = typed("ChatMessage")?;
                    d.insert("roomuuid", room.clone());
                    Ok(d)
                },
            )
        }
        (Service::Mailer, [b"MailerQueue"]) => {
            let n = seq_text(key);
            out(coll("mailqueues"), format!("mail-{n}"), &|| {
                Ok(doc! {
                    "id": format!("mail-{n}"),
                    "ts": seq(key).unwrap_or(0) as i64,
                    "email": typed("Mail")?,
                })
            })
        }
        (Service::Versions, [b"versions", node]) => {
            let (node, n) = (text(node), seq(key).unwrap_or(0) as i64);
            out(
                coll("versions"),
                format!("{node}/{}", seq_text(key)),
                &|| {
                    let cl = from_proto(&gobson::message("ChangeLog"), value.unwrap_or(&[]))
                        .map_err(err)?;
                    let version_id = cl.get_str("uuid").unwrap_or("").to_string();
                    let mtime = cl.get_i64("mtime").unwrap_or(0);
                    let ts = if mtime > 0 {
                        mtime
                            .saturating_mul(1_000_000_000)
                            .saturating_add(n % 1_000_000_000)
                    } else {
                        n
                    };
                    Ok(doc! {
                        "node_uuid": &node,
                        "version_id": version_id,
                        "ts": ts,
                        "changelog": cl,
                    })
                },
            )
        }
        (Service::Jobs, [b"jobs"]) => {
            let id = text(key);
            out(coll("jobs"), id.clone(), &|| {
                let mut job = typed("Job")?;
                let has_events = job.get_array("eventnames").is_ok_and(|a| !a.is_empty());
                let has_schedule = job.get_document("schedule").is_ok();
                job.insert("tasks", Bson::Null);
                Ok(doc! {
                    "id": &id,
                    "owner": job.get_str("owner").unwrap_or("").to_string(),
                    "has_events": has_events,
                    "has_schedule": has_schedule,
                    "job": job,
                })
            })
        }
        (Service::Jobs, [tasks]) if tasks.starts_with(b"tasks-") => {
            let (job_id, id) = (text(&tasks[6..]), text(key));
            out(coll("tasks"), id.clone(), &|| {
                let task = typed("Task")?;
                Ok(doc! {
                    "id": &id,
                    "job_id": &job_id,
                    "status": task.get_i32("status").unwrap_or(0),
                    "ts": i64::from(task.get_i32("starttime").unwrap_or(0)),
                    "task": task,
                })
            })
        }
        _ => Ok(None),
    }
}

/// The Bolt location (bucket path, key) a document came from: the inverse
/// of [`map`], from the document's collection, `_id` and fields. `None`
/// for a document this mapping does not write.
pub fn unmap(
    service: Service,
    opts: &MapOptions,
    collection: &str,
    id: &str,
    doc: &Document,
) -> Option<(Vec<Vec<u8>>, Vec<u8>)> {
    let is = |name: &str| opts.collection(service, name) == collection;
    let b = |s: &str| s.as_bytes().to_vec();
    let num = |s: &str| s.parse::<u64>().ok().map(|n| n.to_be_bytes().to_vec());
    let parts: Vec<&str> = id.split('/').collect();
    match service {
        Service::Docstore if is("documents") => {
            let (store, doc_id) = id.split_once('/')?;
            Some((vec![b(&format!("store-{store}"))], b(doc_id)))
        }
        Service::Activity if is("activities") => match parts.as_slice() {
            [ot, owner, box_, n] => Some((vec![b(ot), b(owner), b(box_)], num(n)?)),
            _ => None,
        },
        Service::Activity if is("subscriptions") => match parts.as_slice() {
            [ot, oid, "subscriptions", user] => {
                Some((vec![b(ot), b(oid), b("subscriptions")], b(user)))
            }
            _ => None,
        },
        Service::Activity if is("markers") => match parts.as_slice() {
            [ot, user, box_, key] => Some((vec![b(ot), b(user), b(box_)], b(key))),
            _ => None,
        },
        Service::Chat if is("rooms") => match parts.as_slice() {
            [rt, obj, room] => Some((vec![b("messages"), b(rt), b(obj)], b(room))),
            _ => None,
        },
        Service::Chat if is("messages") => {
            let (room, n) = id.rsplit_once('/')?;
            Some((vec![b("messages"), b(room)], num(n)?))
        }
        Service::Mailer if is("mailqueues") => {
            Some((vec![b("MailerQueue")], num(id.strip_prefix("mail-")?)?))
        }
        Service::Versions if is("versions") => {
            let (node, n) = id.rsplit_once('/')?;
            Some((vec![b("versions"), b(node)], num(n)?))
        }
        Service::Jobs if is("jobs") => Some((vec![b("jobs")], b(id))),
        Service::Jobs if is("tasks") => {
            let job = doc.get_str("job_id").ok()?;
            Some((vec![b(&format!("tasks-{job}"))], b(id)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
