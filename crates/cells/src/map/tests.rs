use super::*;
use crate::gobson::pb;
use prost::Message as _;

fn be(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

fn m(s: Service, buckets: &[&[u8]], key: &[u8], value: Option<&[u8]>) -> Option<Mapped> {
    try_m(s, buckets, key, value).unwrap()
}

fn try_m(
    s: Service,
    buckets: &[&[u8]],
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<Option<Mapped>, MapError> {
    let b: Vec<Vec<u8>> = buckets.iter().map(|b| b.to_vec()).collect();
    map(s, &MapOptions::default(), &b, key, value)
}

#[test]
fn docstore_documents_keep_data_parsed_as_go_does_and_raw() {
    let v = br#"{"ID":"d1","Owner":"alice","Data":"{\"Path\":\"/p\",\"Size\":3}"}"#;
    let got = m(Service::Docstore, &[b"store-share"], b"d1", Some(v)).unwrap();
    assert_eq!(got.collection, "docstore_documents");
    assert_eq!(got.id, "share/d1");
    let d = got.doc.unwrap();
    assert_eq!(d.get_str("owner").unwrap(), "alice");
    let data = d.get_document("data").unwrap();
    assert_eq!(
        data.get_str("Path").unwrap(),
        "/p",
        "map keys keep their case"
    );
    assert_eq!(
        data.get_f64("Size").unwrap(),
        3.0,
        "interface{{}} numbers are float64"
    );
    assert_eq!(d.get_str("raw").unwrap(), r#"{"Path":"/p","Size":3}"#);
    // A delete needs no value and names the same document.
    let del = m(Service::Docstore, &[b"store-share"], b"d1", None).unwrap();
    assert_eq!((del.id.as_str(), del.doc), ("share/d1", None));
    // The top-level buckets themselves map to nothing.
    assert!(m(Service::Docstore, &[b"other"], b"x", Some(b"{}")).is_none());
}

#[test]
fn activities_get_unique_ids_and_nanosecond_ts() {
    let v = br#"{"id":"/activity-7","type":3,"updated":{"seconds":1714557600,"nanos":250}}"#;
    let a = m(
        Service::Activity,
        &[b"USER", b"alice", b"inbox"],
        &be(7),
        Some(v),
    )
    .unwrap();
    assert_eq!(
        (a.collection.as_str(), a.id.as_str()),
        ("activity_activities", "USER/alice/inbox/7")
    );
    let d = a.doc.unwrap();
    assert_eq!(d.get_i32("owner_type").unwrap(), 1);
    assert_eq!(d.get_i64("ts").unwrap(), 1_714_557_600_000_000_250);
    let ac_id = d.get_str("ac_id").unwrap();
    assert!(
        ac_id.starts_with("/activity-") && ac_id.len() == 46,
        "{ac_id}"
    );
    assert_eq!(
        d.get_document("object").unwrap().get_str("id").unwrap(),
        ac_id
    );
    assert_eq!(
        d.get_document("object").unwrap().get_i32("type").unwrap(),
        3
    );
    // The same sequence in another box is another activity.
    let b = m(
        Service::Activity,
        &[b"USER", b"bob", b"inbox"],
        &be(7),
        Some(v),
    )
    .unwrap();
    assert_ne!(b.doc.unwrap().get_str("ac_id").unwrap(), ac_id);
    // And the same box again is the same one.
    let again = m(
        Service::Activity,
        &[b"USER", b"alice", b"inbox"],
        &be(7),
        Some(v),
    )
    .unwrap();
    assert_eq!(again.doc.unwrap().get_str("ac_id").unwrap(), ac_id);
    // Not JSON: named, not dropped.
    let e = try_m(
        Service::Activity,
        &[b"USER", b"alice", b"inbox"],
        &be(8),
        Some(b"{"),
    )
    .unwrap_err();
    assert_eq!(e.path, "USER/alice/inbox/8");
    assert!(
        e.to_string()
            .contains("pydio.grpc.activity entry USER/alice/inbox/8: the value is not JSON"),
        "{e}"
    );
}

#[test]
fn subscriptions_and_markers() {
    let s = m(
        Service::Activity,
        &[b"NODE", b"n1", b"subscriptions"],
        b"bob",
        Some(br#"["read"]"#),
    )
    .unwrap();
    let d = s.doc.unwrap();
    assert_eq!(
        (
            d.get_str("userid").unwrap(),
            d.get_str("objectid").unwrap(),
            d.get_i32("objecttype").unwrap()
        ),
        ("bob", "n1", 0)
    );
    let k = m(
        Service::Activity,
        &[b"USER", b"bob", b"lastread"],
        b"last",
        Some(&be(12)),
    )
    .unwrap();
    assert_eq!(k.collection, "activity_markers");
    assert_eq!(k.ts_of.as_deref(), Some("USER/bob/inbox/12"));
    let mut d = k.doc.unwrap();
    set_marker_ts(&mut d, Some(1_714_557_600_000_000_000));
    assert_eq!(d.get_i64("timestamp").unwrap(), 1_714_557_600_000_000_000);
    assert_eq!(d.get_str("user_id").unwrap(), "bob");
    let bad = try_m(
        Service::Activity,
        &[b"USER", b"bob", b"lastread"],
        b"last",
        Some(b"xyz"),
    )
    .unwrap_err();
    assert!(bad.reason.contains("not an 8-byte"), "{bad}");
}

#[test]
fn chat_rooms_have_an_integer_type_and_unknown_types_are_named() {
    let global = m(
        Service::Chat,
        &[b"messages", b"GLOBAL", b"global"],
        b"room-g",
        Some(br#"{"Uuid":"room-g","RoomTypeObject":"global"}"#),
    )
    .unwrap();
    assert_eq!(global.collection, "chat_rooms");
    assert_eq!(global.doc.unwrap().get_i32("type").unwrap(), 0);
    let ws = m(
        Service::Chat,
        &[b"messages", b"WORKSPACE", b"ws-1"],
        b"room-w",
        Some(br#"{"Uuid":"room-w","Type":1,"RoomTypeObject":"ws-1"}"#),
    )
    .unwrap();
    assert_eq!(ws.doc.unwrap().get_i32("type").unwrap(), 1);
    let e = try_m(
        Service::Chat,
        &[b"messages", b"PARTY", b"x"],
        b"r",
        Some(b"{}"),
    )
    .unwrap_err();
    assert!(e.reason.contains("unknown type `PARTY`"), "{e}");
    let e = try_m(
        Service::Chat,
        &[b"messages", b"NODE", b"x"],
        b"r",
        Some(br#"{"Type":9}"#),
    )
    .unwrap_err();
    assert!(e.reason.contains("unknown type 9"), "{e}");
}

fn changelog() -> pb::ChangeLog {
    pb::ChangeLog {
        uuid: "v-1".into(),
        description: "ok".into(),
        m_time: 1_714_557_600,
        size: 150,
        data: b"blob-ref".to_vec(),
        owner_uuid: "alice".into(),
        event: Some(pb::NodeChangeEvent {
            r#type: 3,
            ..Default::default()
        }),
        location: Some(pb::Node {
            uuid: "node-1".into(),
            path: "ds/a.txt".into(),
            ..Default::default()
        }),
    }
}

#[test]
fn versions_decode_the_changelog() {
    let p = changelog().encode_to_vec();
    let got = m(
        Service::Versions,
        &[b"versions", b"node-1"],
        &be(2),
        Some(&p),
    )
    .unwrap();
    assert_eq!(
        (got.collection.as_str(), got.id.as_str()),
        ("versions_versions", "node-1/2")
    );
    let d = got.doc.unwrap();
    assert_eq!(d.get_str("version_id").unwrap(), "v-1");
    assert_eq!(d.get_i64("ts").unwrap(), 1_714_557_600_000_000_002);
    let cl = d.get_document("changelog").unwrap();
    assert_eq!(cl.get_i64("size").unwrap(), 150);
    assert_eq!(cl.get_binary_generic("data").unwrap(), b"blob-ref");
    assert_eq!(
        cl.get_document("location")
            .unwrap()
            .get_str("path")
            .unwrap(),
        "ds/a.txt"
    );
    // Truncated protobuf: named, not half-decoded.
    let e = try_m(
        Service::Versions,
        &[b"versions", b"n"],
        &be(1),
        Some(&p[..4]),
    )
    .unwrap_err();
    assert!(e.reason.contains("not a valid ChangeLog"), "{e}");
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
            br#"{"id":"x"}"#.to_vec(),
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
            br#"{"Type":3,"RoomTypeObject":"o-1"}"#.to_vec(),
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
            changelog().encode_to_vec(),
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
fn jobs_and_tasks() {
    let j = m(
        Service::Jobs,
        &[b"jobs"],
        b"j1",
        Some(br#"{"ID":"j1","Owner":"pydio.system.user","EventNames":["NODE_CHANGE"],"Actions":[{"ID":"a","Parameters":{"KeepCase":"1"}}]}"#),
    )
    .unwrap();
    let d = j.doc.unwrap();
    assert!(d.get_bool("has_events").unwrap());
    assert!(!d.get_bool("has_schedule").unwrap());
    let job = d.get_document("job").unwrap();
    let action = job.get_array("actions").unwrap()[0].as_document().unwrap();
    assert_eq!(
        action
            .get_document("parameters")
            .unwrap()
            .get_str("KeepCase")
            .unwrap(),
        "1"
    );
    let t = m(
        Service::Jobs,
        &[b"tasks-j1"],
        b"t1",
        Some(br#"{"ID":"t1","JobID":"j1","Status":3,"StartTime":1714557600}"#),
    )
    .unwrap();
    let d = t.doc.unwrap();
    assert_eq!(
        (d.get_i32("status").unwrap(), d.get_i64("ts").unwrap()),
        (3, 1_714_557_600)
    );
    let e = try_m(Service::Jobs, &[b"jobs"], b"j1", Some(b"{oops")).unwrap_err();
    assert!(
        e.to_string().contains("pydio.grpc.jobs entry jobs/j1"),
        "{e}"
    );
}
