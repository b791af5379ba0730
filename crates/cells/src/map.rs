//! Each Cells service's Bolt layout into the MongoDB documents Cells reads.
//!
//! One Bolt entry (bucket path, key, value) becomes at most one document.
//! Unlike Cells' own migrators, which insert with fresh random ids (a
//! re-run duplicates everything), every document here gets an `_id`
//! derived from its Bolt location alone, so:
//! - a re-run, or an event applied twice, replaces the same document;
//! - a Bolt delete becomes a delete of that `_id`, without the value.
//!
//! Shapes follow `shared/reference/cells-stores.md` section 1b (Cells v4).
//! Where the reference is unsure, the choice is an option with the v4
//! default: collection prefixes ([`MapOptions::prefixes`]), and the
//! version payload, whose protobuf is decoded field by field into
//! `changelog` with the raw bytes kept beside it.
//!
//! Not mapped: Bleve indexes (search, logs, docstore's own index) — after
//! the cutover the operator runs `cells admin resync`; chat's `rooms`
//! top-level bucket (Cells creates it and never uses it); and
//! `configs-versions.db` (Cells keeps configuration history in etcd's
//! history of the `config` key; Ferry copies the current configuration).

use mongodb::bson::{self, doc, Bson, Document};
use serde_json::Value as Json;

/// A Cells service whose store is a Bolt file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Docstore,
    Activity,
    Chat,
    Mailer,
    Versions,
    Jobs,
}

impl Service {
    pub const ALL: [Service; 6] = [
        Service::Docstore,
        Service::Activity,
        Service::Chat,
        Service::Mailer,
        Service::Versions,
        Service::Jobs,
    ];

    /// The service name Cells registers (its data directory's name).
    pub fn name(self) -> &'static str {
        match self {
            Service::Docstore => "pydio.grpc.docstore",
            Service::Activity => "pydio.grpc.activity",
            Service::Chat => "pydio.grpc.chat",
            Service::Mailer => "pydio.grpc.mailer",
            Service::Versions => "pydio.grpc.versions",
            Service::Jobs => "pydio.grpc.jobs",
        }
    }

    /// The Bolt file in the service's data directory.
    pub fn bolt_file(self) -> &'static str {
        match self {
            Service::Docstore => "docstore.db",
            Service::Activity => "activities.db",
            Service::Chat => "chat.db",
            Service::Mailer => "queue.db",
            Service::Versions => "versions.db",
            Service::Jobs => "jobs.db",
        }
    }

    /// The MongoDB collections the service's documents go to.
    pub fn collections(self, opts: &MapOptions) -> Vec<String> {
        let names: &[&str] = match self {
            Service::Docstore => &["documents"],
            Service::Activity => &["activities", "subscriptions", "markers"],
            Service::Chat => &["rooms", "messages"],
            Service::Mailer => &["mailqueues"],
            Service::Versions => &["versions"],
            Service::Jobs => &["jobs", "tasks"],
        };
        names.iter().map(|n| opts.collection(self, n)).collect()
    }

    /// The storage prefix Cells gives the service's Mongo DAO.
    fn prefix(self) -> &'static str {
        match self {
            Service::Docstore => "docstore",
            Service::Activity => "activity",
            Service::Chat => "chat",
            Service::Mailer => "mailer",
            Service::Versions => "versions",
            Service::Jobs => "jobs",
        }
    }

    /// Whether the Cells v4 code read prefixes this service's collections
    /// (docstore and mailer do; activity, chat and versions call the
    /// database directly; jobs goes through the prefixing DAO).
    fn v4_prefixed(self) -> bool {
        matches!(self, Service::Docstore | Service::Mailer | Service::Jobs)
    }
}

/// Whether collection names carry the service's storage prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prefixes {
    /// As the Cells v4 code read does it (see [`Service`]).
    #[default]
    V4,
    /// `<prefix>_<name>` for every service.
    All,
    /// Bare names for every service.
    None,
}

impl Prefixes {
    /// The option's spelling (`v4`, `all`, `none`), as parsed.
    pub fn as_str(self) -> &'static str {
        match self {
            Prefixes::V4 => "v4",
            Prefixes::All => "all",
            Prefixes::None => "none",
        }
    }
}

impl std::str::FromStr for Prefixes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v4" => Ok(Prefixes::V4),
            "all" => Ok(Prefixes::All),
            "none" => Ok(Prefixes::None),
            _ => Err(format!("unknown prefixes `{s}`: use v4, all or none")),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct MapOptions {
    pub prefixes: Prefixes,
}

impl MapOptions {
    pub fn collection(&self, service: Service, name: &str) -> String {
        let prefixed = match self.prefixes {
            Prefixes::V4 => service.v4_prefixed(),
            Prefixes::All => true,
            Prefixes::None => false,
        };
        if prefixed {
            format!("{}_{name}", service.prefix())
        } else {
            name.to_string()
        }
    }
}

/// One document's place, and its content (`None`: delete it).
#[derive(Clone, Debug, PartialEq)]
pub struct Mapped {
    pub collection: String,
    pub id: String,
    pub doc: Option<Document>,
}

/// Why an entry could not be mapped (one sentence, naming the entry).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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

/// JSON to BSON: objects stay documents, numbers keep integer-ness.
fn to_bson(v: &Json) -> Bson {
    bson::to_bson(v).unwrap_or(Bson::Null)
}

fn to_doc(v: &Json) -> Document {
    match to_bson(v) {
        Bson::Document(d) => d,
        other => doc! { "value": other },
    }
}

/// Keys lower-cased, as Go's default BSON codec writes proto structs.
fn lower_keys(d: &Document) -> Document {
    d.iter()
        .map(|(k, v)| (k.to_lowercase(), v.clone()))
        .collect()
}

fn int(v: Option<&Json>) -> i64 {
    v.and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
        .unwrap_or(0)
}

/// RFC 3339 to Unix nanoseconds (UTC; `Z` or `±hh:mm`), 0 when unparsable.
fn rfc3339_ns(s: &str) -> i64 {
    let parse = || -> Option<i64> {
        let (date, rest) = s.split_once('T')?;
        let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
        let (y, m, day) = (d.next()??, d.next()??, d.next()??);
        let time_end = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
        let (time, zone) = rest.split_at(time_end);
        let mut t = time.split(':');
        let (hh, mm) = (
            t.next()?.parse::<i64>().ok()?,
            t.next()?.parse::<i64>().ok()?,
        );
        let sec: f64 = t.next().unwrap_or("0").parse().ok()?;
        let offset = match zone {
            "" | "Z" => 0,
            z => {
                let sign = if z.starts_with('-') { -1 } else { 1 };
                let (oh, om) = z[1..].split_once(':')?;
                sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
            }
        };
        // Days from civil (Howard Hinnant's algorithm).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400 + hh * 3600 + mm * 60 - offset;
        Some(secs * 1_000_000_000 + (sec * 1e9) as i64)
    };
    parse().unwrap_or(0)
}

fn owner_type(name: &[u8]) -> i32 {
    match name {
        b"USER" => 1,
        _ => 0,
    }
}

/// A protobuf message's top-level fields, for `tree.ChangeLog`: strings
/// and varints by field number (`1` uuid, `2` description, `3` data,
/// `4` mtime, `5` size, `7` owner uuid); anything else is left to `raw`.
fn changelog(payload: &[u8]) -> Document {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&c, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(c & 0x7f) << (7 * i);
            if c & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut d = Document::new();
    let mut b = payload;
    while !b.is_empty() {
        let Some(tag) = varint(&mut b) else { break };
        let (field, wire) = (tag >> 3, tag & 7);
        let name = match field {
            1 => "uuid",
            2 => "description",
            3 => "data",
            4 => "mtime",
            5 => "size",
            7 => "owneruuid",
            _ => "",
        };
        match wire {
            0 => {
                let Some(v) = varint(&mut b) else { break };
                if !name.is_empty() {
                    d.insert(name, v as i64);
                }
            }
            2 => {
                let Some(len) = varint(&mut b) else { break };
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > b.len() {
                    break;
                }
                let (v, rest) = b.split_at(len);
                b = rest;
                if field == 3 {
                    d.insert(
                        name,
                        bson::Binary {
                            subtype: bson::spec::BinarySubtype::Generic,
                            bytes: v.to_vec(),
                        },
                    );
                } else if !name.is_empty() {
                    d.insert(name, text(v));
                }
            }
            1 => b = b.get(8..).unwrap_or(&[]),
            5 => b = b.get(4..).unwrap_or(&[]),
            _ => break,
        }
    }
    d
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
    let path = || {
        let mut p: Vec<String> = buckets.iter().map(|b| text(b)).collect();
        p.push(seq_text(key));
        p.join("/")
    };
    let err = |reason: String| MapError {
        service: service.name(),
        path: path(),
        reason,
    };
    let json = || -> Result<Json, MapError> {
        let v = value.unwrap_or(b"null");
        serde_json::from_slice(v).map_err(|e| err(format!("the value is not JSON ({e})")))
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
        }))
    };
    match (service, b.as_slice()) {
        (Service::Docstore, [store]) => {
            let Some(store_id) = store.strip_prefix(b"store-") else {
                return Ok(None);
            };
            let (store_id, doc_id) = (text(store_id), text(key));
            out(coll("documents"), format!("{store_id}/{doc_id}"), &|| {
                let v = json()?;
                let raw = v
                    .get("Data")
                    .and_then(Json::as_str)
                    .unwrap_or("")
                    .to_string();
                let data = match serde_json::from_str::<Json>(&raw) {
                    Ok(j @ Json::Object(_)) => to_bson(&j),
                    _ => Bson::String(raw.clone()),
                };
                Ok(doc! {
                    "store_id": &store_id,
                    "doc_id": &doc_id,
                    "owner": v.get("Owner").and_then(Json::as_str).unwrap_or(""),
                    "data": data,
                    "raw": raw,
                })
            })
        }
        (Service::Activity, [ot, owner, box_]) if matches!(*box_, b"inbox" | b"outbox") => {
            let (ot_name, owner_id, box_name, n) =
                (text(ot), text(owner), text(box_), seq_text(key));
            out(
                coll("activities"),
                format!("{ot_name}/{owner_id}/{box_name}/{n}"),
                &|| {
                    let v = json()?;
                    let ts = v
                        .get("updated")
                        .and_then(Json::as_str)
                        .map_or(0, rfc3339_ns);
                    let ac_id = v
                        .get("Id")
                        .or_else(|| v.get("id"))
                        .and_then(Json::as_str)
                        .map_or_else(|| format!("/activity-{n}"), str::to_string);
                    Ok(doc! {
                        "owner_type": owner_type(ot),
                        "owner_id": &owner_id,
                        "box_name": &box_name,
                        "ts": ts,
                        "ac_id": ac_id,
                        "object": to_doc(&v),
                    })
                },
            )
        }
        (Service::Activity, [ot, owner, b"subscriptions"]) => {
            // Bolt: <ObjectType>/<ObjectId>/subscriptions/<UserId> (Cells'
            // own migrator swaps user and object; this does not).
            let (object_type, object_id, user) = (owner_type(ot), text(owner), text(key));
            out(
                coll("subscriptions"),
                format!("{}/{object_id}/{user}", text(ot)),
                &|| {
                    let events: Vec<String> = serde_json::from_value(json()?).unwrap_or_default();
                    Ok(doc! {
                        "userid": &user,
                        "objecttype": object_type,
                        "objectid": &object_id,
                        "events": events,
                    })
                },
            )
        }
        (Service::Activity, [ot, owner, box_]) if matches!(*box_, b"lastread" | b"lastsent") => {
            let (user, box_name) = (text(owner), text(box_));
            out(
                coll("markers"),
                format!("{}/{user}/{box_name}", text(ot)),
                &|| {
                    let marker = value.and_then(seq).unwrap_or(0);
                    Ok(doc! { "box_name": &box_name, "user_id": &user, "timestamp": marker as i64 })
                },
            )
        }
        (Service::Chat, [b"messages", _room_type, _object]) => {
            out(coll("rooms"), text(key), &|| {
                Ok(lower_keys(&to_doc(&json()?)))
            })
        }
        (Service::Chat, [b"messages", room]) => {
            let room = text(room);
            out(
                coll("messages"),
                format!("{room}/{}", seq_text(key)),
                &|| {
                    let mut d = lower_keys(&to_doc(&json()?));
                    d.insert("roomuuid", room.clone());
                    Ok(d)
                },
            )
        }
        (Service::Mailer, [b"MailerQueue"]) => {
            let n = seq_text(key);
            out(coll("mailqueues"), format!("mail-{n}"), &|| {
                let v = json()?;
                Ok(
                    doc! { "id": format!("mail-{n}"), "ts": seq(key).unwrap_or(0) as i64, "email": to_doc(&v) },
                )
            })
        }
        (Service::Versions, [b"versions", node]) => {
            let (node, n) = (text(node), seq_text(key));
            out(coll("versions"), format!("{node}/{n}"), &|| {
                let payload = value.unwrap_or(&[]);
                let cl = changelog(payload);
                let version_id = cl.get_str("uuid").unwrap_or("").to_string();
                Ok(doc! {
                    "node_uuid": &node,
                    "version_id": version_id,
                    "ts": seq(key).unwrap_or(0) as i64,
                    "changelog": cl,
                    "raw": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: payload.to_vec() },
                })
            })
        }
        (Service::Jobs, [b"jobs"]) => {
            let id = text(key);
            out(coll("jobs"), id.clone(), &|| {
                let v = json()?;
                let has_events = v
                    .get("EventNames")
                    .and_then(Json::as_array)
                    .is_some_and(|a| !a.is_empty());
                Ok(doc! {
                    "id": &id,
                    "owner": v.get("Owner").and_then(Json::as_str).unwrap_or(""),
                    "has_events": has_events,
                    "has_schedule": v.get("Schedule").is_some_and(|s| !s.is_null()),
                    "job": to_doc(&v),
                })
            })
        }
        (Service::Jobs, [tasks]) if tasks.starts_with(b"tasks-") => {
            let (job_id, id) = (text(&tasks[6..]), text(key));
            out(coll("tasks"), id.clone(), &|| {
                let v = json()?;
                Ok(doc! {
                    "id": &id,
                    "job_id": &job_id,
                    "status": int(v.get("Status")),
                    "ts": int(v.get("StartTime")),
                    "task": to_doc(&v),
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
            [ot, oid, user] => Some((vec![b(ot), b(oid), b("subscriptions")], b(user))),
            _ => None,
        },
        Service::Activity if is("markers") => match parts.as_slice() {
            [ot, user, box_] => Some((vec![b(ot), b(user), b(box_)], b("last"))),
            _ => None,
        },
        Service::Chat if is("rooms") => {
            let rt = doc.get_str("type").ok()?;
            let obj = doc.get_str("roomtypeobject").ok()?;
            Some((vec![b("messages"), b(rt), b(obj)], b(id)))
        }
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
mod tests {
    use super::*;

    fn be(n: u64) -> Vec<u8> {
        n.to_be_bytes().to_vec()
    }

    fn m(s: Service, buckets: &[&[u8]], key: &[u8], value: Option<&[u8]>) -> Option<Mapped> {
        let b: Vec<Vec<u8>> = buckets.iter().map(|b| b.to_vec()).collect();
        map(s, &MapOptions::default(), &b, key, value).unwrap()
    }

    #[test]
    fn docstore_documents_keep_data_parsed_and_raw() {
        let v = br#"{"ID":"d1","Owner":"alice","Data":"{\"Path\":\"/p\",\"Size\":3}"}"#;
        let got = m(Service::Docstore, &[b"store-share"], b"d1", Some(v)).unwrap();
        assert_eq!(got.collection, "docstore_documents");
        assert_eq!(got.id, "share/d1");
        let d = got.doc.unwrap();
        assert_eq!(d.get_str("owner").unwrap(), "alice");
        assert_eq!(
            d.get_document("data").unwrap().get_str("Path").unwrap(),
            "/p"
        );
        assert_eq!(d.get_str("raw").unwrap(), r#"{"Path":"/p","Size":3}"#);
        // A delete needs no value and names the same document.
        let del = m(Service::Docstore, &[b"store-share"], b"d1", None).unwrap();
        assert_eq!((del.id.as_str(), del.doc), ("share/d1", None));
        // The top-level buckets themselves map to nothing.
        assert!(m(Service::Docstore, &[b"other"], b"x", Some(b"{}")).is_none());
    }

    #[test]
    fn activities_subscriptions_and_markers() {
        let v = br#"{"Id":"/activity-7","type":"Create","updated":"2024-05-01T10:00:00Z"}"#;
        let a = m(
            Service::Activity,
            &[b"USER", b"alice", b"inbox"],
            &be(7),
            Some(v),
        )
        .unwrap();
        assert_eq!(
            (a.collection.as_str(), a.id.as_str()),
            ("activities", "USER/alice/inbox/7")
        );
        let d = a.doc.unwrap();
        assert_eq!(d.get_i32("owner_type").unwrap(), 1);
        assert_eq!(d.get_str("ac_id").unwrap(), "/activity-7");
        assert_eq!(d.get_i64("ts").unwrap(), 1_714_557_600_000_000_000);
        let s = m(
            Service::Activity,
            &[b"NODE", b"n1", b"subscriptions"],
            b"bob",
            Some(br#"["read"]"#),
        )
        .unwrap();
        let d = s.doc.unwrap();
        assert_eq!(
            (d.get_str("userid").unwrap(), d.get_str("objectid").unwrap()),
            ("bob", "n1")
        );
        let k = m(
            Service::Activity,
            &[b"USER", b"bob", b"lastread"],
            b"last",
            Some(&be(12)),
        )
        .unwrap();
        assert_eq!(k.collection, "markers");
        assert_eq!(k.doc.unwrap().get_i64("timestamp").unwrap(), 12);
    }

    #[test]
    fn versions_decode_the_changelog_and_keep_the_bytes() {
        let mut p = vec![0x0a, 3];
        p.extend(b"v-1");
        p.extend([0x12, 2]);
        p.extend(b"ok");
        p.extend([0x28, 0x96, 0x01]); // field 5 (size) = 150
        let got = m(
            Service::Versions,
            &[b"versions", b"node-1"],
            &be(2),
            Some(&p),
        )
        .unwrap();
        assert_eq!(got.id, "node-1/2");
        let d = got.doc.unwrap();
        assert_eq!(d.get_str("version_id").unwrap(), "v-1");
        assert_eq!(
            d.get_document("changelog")
                .unwrap()
                .get_i64("size")
                .unwrap(),
            150
        );
        // Truncated protobuf: what parses is kept, no panic.
        let short = m(
            Service::Versions,
            &[b"versions", b"n"],
            &be(1),
            Some(&p[..4]),
        )
        .unwrap();
        assert!(short.doc.is_some());
    }

    #[test]
    fn unmap_inverts_map() {
        type Case<'a> = (Service, Vec<&'a [u8]>, Vec<u8>, Vec<u8>);
        let cases: Vec<Case> = vec![
            (
                Service::Docstore,
                vec![b"store-share"],
                b"d/1".to_vec(),
                br#"{"Data":"x"}"#.to_vec(),
            ),
            (
                Service::Activity,
                vec![b"USER", b"al", b"inbox"],
                be(3),
                br#"{"Id":"x"}"#.to_vec(),
            ),
            (
                Service::Activity,
                vec![b"NODE", b"n", b"subscriptions"],
                b"bob".to_vec(),
                b"[]".to_vec(),
            ),
            (
                Service::Activity,
                vec![b"USER", b"al", b"lastsent"],
                b"last".to_vec(),
                be(4),
            ),
            (
                Service::Chat,
                vec![b"messages", b"NODE", b"o-1"],
                b"room-1".to_vec(),
                br#"{"Type":"NODE","RoomTypeObject":"o-1"}"#.to_vec(),
            ),
            (
                Service::Chat,
                vec![b"messages", b"room-1"],
                be(9),
                br#"{"Message":"hi"}"#.to_vec(),
            ),
            (Service::Mailer, vec![b"MailerQueue"], be(5), b"{}".to_vec()),
            (
                Service::Versions,
                vec![b"versions", b"node-1"],
                be(2),
                vec![0x0a, 1, b'v'],
            ),
            (
                Service::Jobs,
                vec![b"jobs"],
                b"j-1".to_vec(),
                b"{}".to_vec(),
            ),
            (
                Service::Jobs,
                vec![b"tasks-j-1"],
                b"t-1".to_vec(),
                b"{}".to_vec(),
            ),
        ];
        for (s, buckets, key, value) in cases {
            let bk: Vec<Vec<u8>> = buckets.iter().map(|b| b.to_vec()).collect();
            let o = MapOptions::default();
            let m = map(s, &o, &bk, &key, Some(&value)).unwrap().unwrap();
            let back = unmap(s, &o, &m.collection, &m.id, m.doc.as_ref().unwrap());
            assert_eq!(back, Some((bk, key)), "{s:?} {}", m.id);
        }
    }

    #[test]
    fn prefixes_are_an_option() {
        let o = |p| MapOptions { prefixes: p };
        assert_eq!(o(Prefixes::V4).collection(Service::Chat, "rooms"), "rooms");
        assert_eq!(
            o(Prefixes::All).collection(Service::Chat, "rooms"),
            "chat_rooms"
        );
        assert_eq!(
            o(Prefixes::None).collection(Service::Jobs, "tasks"),
            "tasks"
        );
        assert_eq!(
            o(Prefixes::V4).collection(Service::Jobs, "tasks"),
            "jobs_tasks"
        );
    }

    #[test]
    fn a_value_that_is_not_json_is_named() {
        let b = vec![b"jobs".to_vec()];
        let e = map(
            Service::Jobs,
            &MapOptions::default(),
            &b,
            b"j1",
            Some(b"{oops"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("pydio.grpc.jobs entry jobs/j1"),
            "{e}"
        );
    }

    #[test]
    fn rfc3339_with_offsets() {
        assert_eq!(rfc3339_ns("1970-01-01T00:00:01Z"), 1_000_000_000);
        assert_eq!(rfc3339_ns("1970-01-01T01:00:01+01:00"), 1_000_000_000);
        assert_eq!(rfc3339_ns("garbage"), 0);
    }
}
