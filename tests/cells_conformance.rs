//! What a real Cells v4 reads back after `ferry stop`, service by service,
//! against one table stated once below (collection, `_id`, every field's
//! name and BSON type as Go's default codec writes Cells' structs, and the
//! indexes Cells' models declare), on a real mongod 7.0.
//!
//! The home is the Go fixture's (`cells-home`: values as Cells encodes
//! them) with one entry of each kind Cells itself cannot read added
//! (`cells-bad`); the cutover refuses to open until they are accepted by
//! name. Also: versions decoded back into a ChangeLog and compared field by
//! field with what the fixture wrote, distinct `ac_id`s for equal Bolt
//! sequences, `ListRooms`'s `{type: 0}`, markers against `ts`, and the
//! keyring read through the printed `CELLS_KEYRING` resolved as Cells does.

#[path = "bolt-fixture/fixture.rs"]
mod fixture;

use ferry_cells::gobson::pb;
use ferry_testkit::{http, require, Etcd, Mongod, OpenBao};
use ferry_tests::harness::*;
use mongodb::bson::{doc, spec::ElementType, Bson, Document};
use prost::Message as _;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ElementType::{
    Array, Binary, Boolean, Double, EmbeddedDocument as Doc, Int32, Int64, Null, String as Str,
};

/// Per collection: fields (in order) with their BSON types (several where
/// Go writes a nil as null), and the index keys Cells declares.
type Table = [(
    &'static str,
    &'static [(&'static str, &'static [ElementType])],
    &'static [&'static str],
)];

const CELLS_V4: &Table = &[
    (
        "docstore_documents",
        &[
            ("_id", &[Str]),
            ("store_id", &[Str]),
            ("doc_id", &[Str]),
            ("owner", &[Str]),
            ("data", &[Doc, Str]),
            ("raw", &[Str]),
        ],
        &["store_id_1", "store_id_1_doc_id_1"],
    ),
    (
        "activity_activities",
        &[
            ("_id", &[Str]),
            ("owner_type", &[Int32]),
            ("owner_id", &[Str]),
            ("box_name", &[Str]),
            ("ts", &[Int64]),
            ("ac_id", &[Str]),
            ("object", &[Doc]),
        ],
        &["ac_id_1", "ts_-1", "owner_type_1_owner_id_1_box_name_1"],
    ),
    (
        "activity_subscriptions",
        &[
            ("_id", &[Str]),
            ("userid", &[Str]),
            ("objecttype", &[Int32]),
            ("objectid", &[Str]),
            ("events", &[Array, Null]),
        ],
        &["objectype_1_objectid_1", "objectype_1_objectid_1_userid_1"],
    ),
    (
        "activity_markers",
        &[
            ("_id", &[Str]),
            ("box_name", &[Str]),
            ("user_id", &[Str]),
            ("timestamp", &[Int64]),
        ],
        &["box_name_1_user_id_1"],
    ),
    (
        "chat_rooms",
        &[
            ("_id", &[Str]),
            ("uuid", &[Str]),
            ("type", &[Int32]),
            ("roomtypeobject", &[Str]),
            ("roomlabel", &[Str]),
            ("users", &[Array, Null]),
            ("lastupdated", &[Int32]),
        ],
        &["uuid_1", "type_1_roomtypeobject_1"],
    ),
    (
        "chat_messages",
        &[
            ("_id", &[Str]),
            ("uuid", &[Str]),
            ("roomuuid", &[Str]),
            ("message", &[Str]),
            ("author", &[Str]),
            ("timestamp", &[Int64]),
            ("activity", &[Doc, Null]),
            ("info", &[Doc, Null]),
        ],
        &["roomuuid_1", "author_1", "timestamp_-1"],
    ),
    (
        "mailer_mailqueues",
        &[
            ("_id", &[Str]),
            ("id", &[Str]),
            ("ts", &[Int64]),
            ("email", &[Doc]),
        ],
        &["ts_1"],
    ),
    (
        "versions_versions",
        &[
            ("_id", &[Str]),
            ("node_uuid", &[Str]),
            ("version_id", &[Str]),
            ("ts", &[Int64]),
            ("changelog", &[Doc]),
        ],
        &["node_uuid_1", "node_uuid_1_version_id_1", "ts_-1"],
    ),
    (
        "jobs_jobs",
        &[
            ("_id", &[Str]),
            ("id", &[Str]),
            ("owner", &[Str]),
            ("has_events", &[Boolean]),
            ("has_schedule", &[Boolean]),
            ("job", &[Doc]),
        ],
        &["id_1", "owner_1_has_events_1_has_schedule_1"],
    ),
    (
        "jobs_tasks",
        &[
            ("_id", &[Str]),
            ("id", &[Str]),
            ("job_id", &[Str]),
            ("status", &[Int32]),
            ("ts", &[Int64]),
            ("task", &[Doc]),
        ],
        &["id_1_job_id_1_status_1_ts_-1"],
    ),
];

/// The `changelog` sub-document (`tree.ChangeLog`), its `location` and
/// `event` (Go codec: every field, lower-cased, nil as null).
const CHANGELOG: &[(&str, &[ElementType])] = &[
    ("uuid", &[Str]),
    ("description", &[Str]),
    ("mtime", &[Int64]),
    ("size", &[Int64]),
    ("data", &[Binary]),
    ("owneruuid", &[Str]),
    ("event", &[Doc]),
    ("location", &[Doc]),
];
const NODE: &[(&str, &[ElementType])] = &[
    ("uuid", &[Str]),
    ("path", &[Str]),
    ("type", &[Int32]),
    ("size", &[Int64]),
    ("mtime", &[Int64]),
    ("mode", &[Int32]),
    ("etag", &[Str]),
    ("metastore", &[Doc, Null]),
    ("commits", &[Array, Null]),
    ("appearsin", &[Array, Null]),
];
const EVENT: &[(&str, &[ElementType])] = &[
    ("type", &[Int32]),
    ("source", &[Doc, Null]),
    ("target", &[Doc, Null]),
    ("metadata", &[Doc, Null]),
    ("silent", &[Boolean]),
    ("optimistic", &[Boolean]),
];

fn check_fields(what: &str, d: &Document, table: &[(&str, &[ElementType])]) {
    let names: Vec<&str> = d.keys().map(String::as_str).collect();
    let want: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, want, "{what}: fields of {d}");
    for (name, types) in table {
        let t = d.get(*name).unwrap().element_type();
        assert!(
            types.contains(&t),
            "{what}: {name} is {t:?}, not one of {types:?}: {d}"
        );
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn all(uri: &str, coll: &str, filter: Document) -> Vec<Document> {
    rt().block_on(async {
        let c = mongodb::Client::with_uri_str(uri).await.unwrap();
        let mut cur = c
            .database("cells")
            .collection::<Document>(coll)
            .find(filter)
            .await
            .unwrap();
        let mut out = Vec::new();
        while cur.advance().await.unwrap() {
            out.push(cur.deserialize_current().unwrap());
        }
        out
    })
}

fn index_names(uri: &str, coll: &str) -> BTreeSet<String> {
    rt().block_on(async {
        let c = mongodb::Client::with_uri_str(uri).await.unwrap();
        c.database("cells")
            .collection::<Document>(coll)
            .list_index_names()
            .await
            .unwrap()
            .into_iter()
            .collect()
    })
}

fn home(bin: &Path, dir: &Path) -> PathBuf {
    let home = dir.join("cells");
    std::fs::create_dir_all(&home).unwrap();
    fixture::run(bin, "cells-home", &home, &[]);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cells");
    for f in ["pydio.json", "pydio-vault.json", "cells-vault-key"] {
        std::fs::copy(fixtures.join(f), home.join(f)).unwrap();
    }
    home
}

fn start(f: &Ferry, source: &str, targets: &[String]) -> std::process::Output {
    let listen = format!("127.0.0.1:{}", f.port);
    let mut args = vec![
        "start",
        "--no-monitor",
        "--agent.listen",
        &listen,
        "--source",
        source,
        "--source.read-only=external",
    ];
    for t in targets {
        args.extend(["--target", t.as_str()]);
    }
    f.run(&args)
}

/// Cells' Vault store: `vault://h/<path>?key=<k>` reads `<path>/data/<k>`.
fn read_like_cells(bao: &OpenBao, url: &str) -> Value {
    let rest = url.split_once("://").unwrap().1;
    let (_, path_q) = rest.split_once('/').unwrap();
    let (path, q) = path_q.split_once('?').expect("Cells needs ?key=");
    let key = q.strip_prefix("key=").expect("?key=");
    let r = http::get(
        &bao.endpoint(),
        &format!("/v1/{path}/data/{key}"),
        &[("X-Vault-Token", "root")],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{url}: {}", r.body);
    serde_json::from_str::<Value>(&r.body).unwrap()["data"]["data"].clone()
}

#[test]
fn cells_v4_reads_back_every_service_as_it_wrote_it() {
    let Some(bin) = fixture::program() else {
        return;
    };
    let (Some(mongo), Some(etcd), Some(bao)) = (
        require(Mongod::start()),
        require(Etcd::start()),
        require(OpenBao::start()),
    ) else {
        return;
    };
    let f = Ferry::new();
    let home = home(&bin, f.dir.path());
    fixture::run(&bin, "cells-bad", &home, &[]);
    let source = format!("cells://{}", home.display());
    let uri = mongo.uri();
    // Ferry's form of the keyring target; Cells is pointed at `?key=`.
    let targets = vec![
        format!("{uri}/cells"),
        etcd.url("config"),
        format!("vault://root@{}/secret/cells/keyring", bao.endpoint()),
    ];
    ok(&start(&f, &source, &targets), "start");
    let s = f.wait_for("caught up", Duration::from_secs(120), |s| {
        all_streaming(s) && max_lag(s) == 0
    });

    // The three bad entries are named in the status, then refuse the cutover.
    let names = [
        "pydio.grpc.versions:versions/node-uuid-bad/1",
        "pydio.grpc.activity:USER/alice/outbox/9999",
        "pydio.grpc.chat:messages/PARTY/party-object/room-party",
    ];
    let unmapped = s["unmapped"].to_string();
    for n in names {
        let (svc, path) = n.split_once(':').unwrap();
        assert!(
            unmapped.contains(&format!("{svc} entry {path}")),
            "{n} not in {unmapped}"
        );
    }
    let out = f.run(&["stop", "--timeout", "60s"]);
    assert!(
        !out.status.success(),
        "a cutover with unmapped entries opened the target"
    );
    let all_out = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        all_out.contains("could not be mapped") && all_out.contains("--accept-unmapped"),
        "{all_out}"
    );
    // Accepted by name, the cutover opens and the proof lists them.
    let out = f.run(&[
        "stop",
        "--timeout",
        "60s",
        "--accept-unmapped",
        &names.join(","),
    ]);
    ok(&out, "stop accepting the unmapped entries");
    f.wait_agent_exit(Duration::from_secs(30));
    let proof: Value =
        serde_json::from_slice(&std::fs::read(f.journal().join("cutover-proof.json")).unwrap())
            .unwrap();
    assert_eq!(proof["differences"], 0, "{proof}");
    assert_eq!(
        proof["unmapped_accepted"].as_array().unwrap().len(),
        3,
        "{proof}"
    );

    // The table: names, types, indexes of every collection.
    for (coll, fields, indexes) in CELLS_V4 {
        let docs = all(&uri, coll, doc! {});
        assert!(!docs.is_empty(), "{coll} is empty");
        for d in &docs {
            check_fields(coll, d, fields);
        }
        let have = index_names(&uri, coll);
        for i in *indexes {
            assert!(have.contains(*i), "{coll}: index {i} missing from {have:?}");
        }
    }
    // No bare collections of the earlier naming.
    for bare in ["activities", "rooms", "versions"] {
        assert!(all(&uri, bare, doc! {}).is_empty(), "{bare} written");
    }

    // versions: each document decodes back into the ChangeLog the fixture wrote.
    let written: Vec<Value> = serde_json::from_slice(
        &std::fs::read(format!("{}.versions.json", home.display())).unwrap(),
    )
    .unwrap();
    let versions = all(&uri, "versions_versions", doc! {});
    assert_eq!(versions.len(), written.len());
    for w in &written {
        let node = w["Node"].as_str().unwrap();
        let v = versions
            .iter()
            .find(|d| d.get_str("_id").unwrap() == format!("{node}/{}", w["Seq"]))
            .unwrap_or_else(|| panic!("no version {node}/{}", w["Seq"]));
        let cl = v.get_document("changelog").unwrap();
        check_fields("changelog", cl, CHANGELOG);
        check_fields(
            "changelog.location",
            cl.get_document("location").unwrap(),
            NODE,
        );
        check_fields("changelog.event", cl.get_document("event").unwrap(), EVENT);
        let back = pb::ChangeLog {
            uuid: cl.get_str("uuid").unwrap().into(),
            description: cl.get_str("description").unwrap().into(),
            m_time: cl.get_i64("mtime").unwrap(),
            size: cl.get_i64("size").unwrap(),
            data: cl.get_binary_generic("data").unwrap().clone(),
            owner_uuid: cl.get_str("owneruuid").unwrap().into(),
            event: Some(pb::NodeChangeEvent {
                r#type: cl.get_document("event").unwrap().get_i32("type").unwrap(),
                ..Default::default()
            }),
            location: Some(pb::Node {
                uuid: cl
                    .get_document("location")
                    .unwrap()
                    .get_str("uuid")
                    .unwrap()
                    .into(),
                path: cl
                    .get_document("location")
                    .unwrap()
                    .get_str("path")
                    .unwrap()
                    .into(),
                ..Default::default()
            }),
        };
        let data = ferry_testkit::base64_decode(w["Data"].as_str().unwrap()).unwrap();
        assert_eq!(back.uuid, w["Uuid"].as_str().unwrap());
        assert_eq!(v.get_str("version_id").unwrap(), back.uuid);
        assert_eq!(back.description, w["Description"].as_str().unwrap());
        assert_eq!(back.m_time, w["MTime"].as_i64().unwrap());
        assert_eq!(back.size, w["Size"].as_i64().unwrap());
        assert_eq!(back.data, data);
        assert_eq!(back.owner_uuid, w["OwnerUuid"].as_str().unwrap());
        assert_eq!(
            back.event.as_ref().unwrap().r#type,
            w["EventType"].as_i64().unwrap() as i32
        );
        let loc = back.location.as_ref().unwrap();
        assert_eq!(
            (loc.uuid.as_str(), loc.path.as_str()),
            (
                w["NodeUuid"].as_str().unwrap(),
                w["NodePath"].as_str().unwrap()
            )
        );
        assert!(!back.encode_to_vec().is_empty());
        assert_eq!(
            cl.get_document("location")
                .unwrap()
                .get_document("metastore")
                .unwrap()
                .get_str("name")
                .unwrap(),
            "\"file.txt\""
        );
        // Listing by ts (Cells sorts ts:-1) keeps the Bolt order.
        assert!(v.get_i64("ts").unwrap() >= w["MTime"].as_i64().unwrap() * 1_000_000_000);
    }

    // activity: the same Bolt sequence in several boxes, distinct ac_ids;
    // ts in nanoseconds from `updated`.
    let acts = all(&uri, "activity_activities", doc! {});
    let ids: BTreeSet<&str> = acts.iter().map(|a| a.get_str("ac_id").unwrap()).collect();
    assert_eq!(ids.len(), acts.len(), "ac_ids repeat");
    let seq1: Vec<&Document> = acts
        .iter()
        .filter(|a| a.get_str("_id").unwrap().ends_with("/1"))
        .collect();
    assert!(
        seq1.len() >= 4,
        "the fixture starts every box at sequence 1"
    );
    for a in &acts {
        let o = a.get_document("object").unwrap();
        assert_eq!(o.get_str("id").unwrap(), a.get_str("ac_id").unwrap());
        let u = o.get_document("updated").unwrap();
        let ns =
            u.get_i64("seconds").unwrap() * 1_000_000_000 + i64::from(u.get_i32("nanos").unwrap());
        assert_eq!(a.get_i64("ts").unwrap(), ns, "{a}");
        assert_eq!(
            o.get_document("actor").unwrap().get_i32("type").unwrap(),
            23
        );
    }
    // markers: the ts of the inbox activity Bolt points to, so Cells' `ts > timestamp` works.
    let markers = all(&uri, "activity_markers", doc! {});
    assert!(!markers.is_empty());
    let by_id: BTreeMap<&str, &Document> = acts
        .iter()
        .map(|a| (a.get_str("_id").unwrap(), a))
        .collect();
    let bolt = ferry_bolt::BoltFile::open(home.join("services/pydio.grpc.activity/activities.db"))
        .unwrap()
        .read_all()
        .unwrap()
        .1;
    for m in &markers {
        let id = m.get_str("_id").unwrap();
        let parts: Vec<&str> = id.split('/').collect();
        let e = bolt
            .iter()
            .find(|e| {
                e.buckets.len() == 3
                    && e.buckets[1] == parts[1].as_bytes()
                    && e.buckets[2] == parts[2].as_bytes()
                    && e.buckets[0] == parts[0].as_bytes()
            })
            .unwrap();
        let seq = u64::from_be_bytes(e.value.as_deref().unwrap().try_into().unwrap());
        let act = by_id[format!("{}/{}/inbox/{seq}", parts[0], parts[1]).as_str()];
        assert_eq!(
            m.get_i64("timestamp").unwrap(),
            act.get_i64("ts").unwrap(),
            "{m}"
        );
        let newer = all(
            &uri,
            "activity_activities",
            doc! {"owner_type": act.get_i32("owner_type").unwrap(), "owner_id": parts[1], "box_name": "inbox", "ts": {"$gt": m.get_i64("timestamp").unwrap()}},
        );
        let expected = acts
            .iter()
            .filter(|a| {
                a.get_str("_id")
                    .unwrap()
                    .starts_with(&format!("{}/{}/inbox/", parts[0], parts[1]))
            })
            .filter(|a| {
                a.get_str("_id")
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    > seq
            })
            .count();
        assert_eq!(newer.len(), expected, "unread after {id}");
    }

    // chat: ListRooms{type: GLOBAL} finds the rooms whose Bolt JSON omits Type.
    let global = all(&uri, "chat_rooms", doc! {"type": 0});
    let uuids: BTreeSet<&str> = global.iter().map(|r| r.get_str("uuid").unwrap()).collect();
    assert_eq!(uuids, BTreeSet::from(["room-global-0", "room-global-1"]));
    assert_eq!(
        all(
            &uri,
            "chat_rooms",
            doc! {"type": 3, "roomtypeobject": "node-object-1"}
        )
        .len(),
        1
    );
    assert_eq!(
        all(&uri, "chat_messages", doc! {"roomuuid": "room-user-0"}).len(),
        20
    );
    // Docstore data as Go's map[string]interface{}: numbers are doubles.
    let d = &all(
        &uri,
        "docstore_documents",
        doc! {"store_id": "meta", "doc_id": "meta-doc-001"},
    )[0];
    assert_eq!(
        d.get_document("data")
            .unwrap()
            .get("Size")
            .unwrap()
            .element_type(),
        Double
    );
    // jobs and tasks as Cells queries them.
    assert_eq!(
        all(&uri, "jobs_jobs", doc! {"has_schedule": true}).len(),
        15
    );
    assert!(!all(&uri, "jobs_tasks", doc! {"status": 3}).is_empty());
    assert!(matches!(
        all(&uri, "mailer_mailqueues", doc! {})[0].get("email"),
        Some(Bson::Document(_))
    ));

    // Keyring: through the CELLS_KEYRING the proof prints, resolved as Cells does.
    let steps: Vec<String> = serde_json::from_value(proof["next_steps"].clone()).unwrap();
    let line = steps
        .iter()
        .find(|l| l.starts_with("export CELLS_KEYRING="))
        .unwrap();
    let url = line.trim_start_matches("export CELLS_KEYRING=");
    assert!(url.contains("?key="), "{url}");
    let keyring = read_like_cells(&bao, url);
    let want: Value = serde_json::from_slice(&std::fs::read(home.join("cells-vault-key")).unwrap())
        .unwrap_or(Value::Null);
    assert!(keyring.to_string().contains("keyring.master"), "{keyring}");
    if want.is_object() {
        assert_eq!(keyring, want);
    }
    assert!(
        steps
            .iter()
            .any(|l| l == &format!("export CELLS_VAULT={}", etcd.url("vault"))),
        "{steps:?}"
    );
}

#[test]
fn targets_cells_would_misread_are_refused_before_anything_is_written() {
    let Some(bin) = fixture::program() else {
        return;
    };
    let (Some(mongo), Some(etcd), Some(bao)) = (
        require(Mongod::start()),
        require(Etcd::start()),
        require(OpenBao::start()),
    ) else {
        return;
    };
    let f = Ferry::new();
    let home = home(&bin, f.dir.path());
    let source = format!("cells://{}", home.display());
    let uri = mongo.uri();
    let vault = format!("vault://root@{}/secret/cells/keyring", bao.endpoint());
    let check = |targets: Vec<String>, code: i32, needle: &str| {
        let out = start(&f, &source, &targets);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{targets:?}: {err}");
        assert!(err.contains(needle), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
        assert!(!f.journal().exists(), "a journal was made");
    };
    // A prefixed etcd target: Cells would not find pydio-vault.json.
    check(
        vec![format!("{uri}/cells"), etcd.url("team-a"), vault.clone()],
        2,
        "Cells reads its config vault from the etcd key `vault`",
    );
    // A keyring URL Cells would resolve to another secret.
    check(
        vec![
            format!("{uri}/cells"),
            etcd.url("config"),
            format!("vault://root@{}/secret/cells?key=keyring", bao.endpoint()),
        ],
        2,
        "write the keyring target as vault://",
    );
    // A database already written with the earlier naming.
    rt().block_on(async {
        let c = mongodb::Client::with_uri_str(&uri).await.unwrap();
        let db = c.database("cells");
        db.create_collection("activities").await.unwrap();
        db.collection::<Document>("activities")
            .insert_one(doc! {"ac_id": "/activity-1"})
            .await
            .unwrap();
    });
    check(
        vec![format!("{uri}/cells"), etcd.url("config"), vault],
        3,
        "--cells.prefixes v4-early",
    );
    // Nothing reached the targets.
    let names = rt().block_on(async {
        let c = mongodb::Client::with_uri_str(&uri).await.unwrap();
        c.database("cells").list_collection_names().await.unwrap()
    });
    assert_eq!(names, ["activities"]);
    let kv = rt().block_on(async {
        let mut c = connect(&etcd.endpoint(), None).await;
        c.get("", Some(etcd_client::GetOptions::new().with_all_keys()))
            .await
            .unwrap()
            .kvs()
            .len()
    });
    assert_eq!(kv, 0);
}
