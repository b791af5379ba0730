//! etcd to Kafka on a real broker (tansu, durable on S3 served by moto):
//! every change is in the topic exactly once, in the shape a Debezium
//! consumer reads, through SIGKILLs of the agent during the snapshot and
//! the streaming and a broker restart; and the bad inputs a user hits are
//! refused in one sentence with nothing written.

use ferry_testkit::{require, Etcd, Kafka};
use ferry_tests::harness::*;
use ferry_tests::topic::{consume, Consumed};
use rand::Rng;
use rdkafka::config::ClientConfig;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Held by each test that SIGKILLs agents and restarts a durable broker:
/// three of them at once (with the rest of this file running beside them)
/// overloaded two cores, and one start timed out.
static KILL_TESTS: Mutex<()> = Mutex::new(());

fn one_kill_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    KILL_TESTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The source's keys under `prefix` and their values.
fn source_state(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    prefix: &str,
) -> BTreeMap<String, String> {
    rt.block_on(async {
        let mut c = connect(endpoint, None).await;
        let r = c
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        r.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key().to_vec()).unwrap(),
                    String::from_utf8(kv.value().to_vec()).unwrap(),
                )
            })
            .collect()
    })
}

fn assert_topic_is_source(c: &Consumed, source: &BTreeMap<String, String>) {
    let mut seen = HashSet::new();
    for e in &c.events {
        assert!(
            seen.insert(*e),
            "shard {} sequence {} is in the topic twice",
            e.0,
            e.1
        );
    }
    assert_eq!(
        c.deletes_without_tombstone, 0,
        "every delete has its tombstone"
    );
    for (k, v) in source {
        let rk = serde_json::json!({ "key": k }).to_string();
        let last = c
            .last
            .get(&rk)
            .unwrap_or_else(|| panic!("{k} is not in the topic"));
        let after = last
            .as_ref()
            .unwrap_or_else(|| panic!("{k} ends in a tombstone but the source holds it"));
        assert_eq!(after["value"].as_str(), Some(v.as_str()), "{k}");
        assert_eq!(after["key"].as_str(), Some(k.as_str()), "{k}");
    }
    for (rk, last) in &c.last {
        if last.is_some() {
            let k: Value = serde_json::from_str(rk).unwrap();
            assert!(
                source.contains_key(k["key"].as_str().unwrap()),
                "{rk} is live in the topic but gone from the source"
            );
        }
    }
}

#[test]
fn etcd_to_kafka_exactly_once_through_kills_and_a_broker_restart() {
    let _one = one_kill_test_at_a_time();
    let (Some(src), Some(mut kafka)) = (require(Etcd::start()), require(Kafka::start_durable()))
    else {
        return;
    };
    let rt = rt();
    let f = Ferry::new();
    let (source_url, target_url) = (src.url("k"), kafka.url("changes"));
    let client = rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "k", 4_000).await;
        c
    });
    let writer = rt.block_on(async {
        Writer::spawn(
            client,
            "k".into(),
            4_500,
            200_000,
            Duration::from_micros(1500),
        )
    });
    // The writer stops before the last kill: the cutover needs a quiet
    // source (read-only is external).
    let mut writer = Some(writer);
    through_kills(
        &f,
        &mut kafka,
        (&source_url, &target_url),
        &["--source.read-only=external", "--shards", "4"],
        10,
        |round| {
            if round == 9 {
                let written = rt.block_on(writer.take().expect("one writer").finish());
                assert!(written.ops.load(std::sync::atomic::Ordering::Relaxed) > 0);
            }
        },
    );
    let proof: Value =
        serde_json::from_slice(&std::fs::read(f.journal().join("cutover-proof.json")).unwrap())
            .unwrap();
    assert!(
        proof["target_positions"]
            .as_object()
            .is_some_and(|m| !m.is_empty()),
        "the proof records where each partition ends: {proof}"
    );
    let consumed = consume(&kafka.bootstrap(), "changes");
    let source = source_state(&rt, &src.endpoint(), "k/");
    assert_topic_is_source(&consumed, &source);
    assert!(
        consumed.ops.get("r").copied().unwrap_or(0) >= 4_000,
        "snapshot reads are op r: {:?}",
        consumed.ops
    );
    assert!(
        consumed.ops.get("d").copied().unwrap_or(0) > 0,
        "deletes were published: {:?}",
        consumed.ops
    );
    ok(
        &f.run(&["verify", "--source", &source_url, "--target", &target_url]),
        "verify reads the topic: every event once",
    );
}

#[test]
fn bad_kafka_targets_are_refused_with_nothing_written() {
    let (Some(src), Some(kafka)) = (require(Etcd::start()), require(Kafka::start())) else {
        return;
    };
    let rt = rt();
    rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "b", 10).await;
    });
    // A topic of one partition for a route of four shards.
    rt.block_on(async {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap())
            .create()
            .unwrap();
        admin
            .create_topics(
                &[NewTopic::new("narrow", 1, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
    });
    let dead = format!(
        "kafka://127.0.0.1:{}/t",
        ferry_testkit::free_port().unwrap()
    );
    let f = Ferry::new();
    let cases: Vec<(String, String, i32, &str)> = vec![
        (src.url("b"), dead, 3, "does not answer"),
        (
            src.url("b"),
            kafka.url("narrow"),
            3,
            "fewer than the 4 shards",
        ),
    ];
    for (s, t, code, needle) in cases {
        let out = f.start(&s, &t, &["--source.read-only=external", "--shards", "4"]);
        assert_eq!(out.status.code(), Some(code), "{t}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(needle), "{t}: `{needle}` not in {err}");
        assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
        assert!(
            !f.journal().exists(),
            "{t}: a refused start created the journal"
        );
    }
    let narrow = consume(&kafka.bootstrap(), "narrow");
    assert!(narrow.events.is_empty(), "a refused start wrote the topic");
}

/// Inserts `n` documents into app.users on `uri`.
async fn mongo_load(uri: &str, n: i64) {
    use mongodb::bson::{doc, Document};
    let c = mongodb::Client::with_uri_str(uri).await.unwrap();
    let docs: Vec<Document> = (0..n)
        .map(|i| doc! {"_id": i, "name": format!("user-{i}"), "tags": ["a", "b"]})
        .collect();
    c.database("app")
        .collection::<Document>("users")
        .insert_many(docs)
        .await
        .unwrap();
}

/// What the kill tests' agents log: the sink's tail reads among the rest.
const LOG: &str = "warn,ferry_kafka=info";

/// `rounds` starts of `f`, each SIGKILLed after a random wait (early ones
/// in the copy, later ones streaming), `between` run after each kill, the
/// broker restarted on its durable storage halfway; then a final start,
/// caught up and cut over.
fn through_kills(
    f: &Ferry,
    kafka: &mut Kafka,
    (s, t): (&str, &str),
    args: &[&str],
    rounds: usize,
    mut between: impl FnMut(usize),
) {
    let mut rng = rand::thread_rng();
    let deadline = Instant::now() + Duration::from_secs(600);
    for round in 0..rounds {
        assert!(
            Instant::now() < deadline,
            "the test exceeded its time bound"
        );
        ok(
            &f.start_logging(s, t, args, LOG),
            &format!("start (round {round})"),
        );
        let wait = if round < rounds / 2 {
            rng.gen_range(100..1200)
        } else {
            rng.gen_range(400..2500)
        };
        std::thread::sleep(Duration::from_millis(wait));
        f.kill_agent();
        between(round);
        if round == rounds / 2 {
            kafka.restart().expect("broker restart on durable storage");
        }
    }
    ok(&f.start_logging(s, t, args, LOG), "final start");
    f.wait_for("caught up", Duration::from_secs(180), |st| {
        all_streaming(st) && max_lag(st) == 0
    });
    let stop = f.run(&["stop", "--timeout", "120s"]);
    if !stop.status.success() {
        // What each start read of the partitions and why it failed.
        let log: Vec<String> = f
            .agent_log()
            .lines()
            .filter(|l| !l.contains(" INFO ") || l.contains("tail"))
            .map(str::to_string)
            .collect();
        eprintln!("agent log (tails, warnings, errors):\n{}", log.join("\n"));
    }
    ok(&stop, "ferry stop");
    f.wait_agent_exit(Duration::from_secs(30));
}

/// Every (shard, sequence, sweep) once, and every delete followed by its
/// tombstone.
fn assert_exactly_once(c: &Consumed) {
    let mut seen = HashSet::new();
    for e in &c.events {
        assert!(seen.insert(*e), "{e:?} twice");
    }
    assert_eq!(
        c.deletes_without_tombstone, 0,
        "a delete without its tombstone"
    );
}

#[test]
fn mongodb_to_kafka_publishes_each_document_once_through_kills_and_a_broker_restart() {
    let _one = one_kill_test_at_a_time();
    use mongodb::bson::{doc, Bson, Document};
    let (Some(src), Some(mut kafka)) = (
        require(ferry_testkit::Mongod::start()),
        require(Kafka::start_durable()),
    ) else {
        return;
    };
    let rt = rt();
    rt.block_on(mongo_load(&src.uri(), 3000));
    let f = Ferry::new();
    let (s, t) = (format!("{}/app", src.uri()), kafka.url("docs"));
    let users = || {
        let uri = src.uri();
        async move {
            mongodb::Client::with_uri_str(uri)
                .await
                .unwrap()
                .database("app")
                .collection::<Document>("users")
        }
    };
    // Live changes after every kill: an update, a delete, an insert.
    through_kills(
        &f,
        &mut kafka,
        (&s, &t),
        &["--source.read-only=external", "--shards", "2"],
        10,
        |round| {
            let r = round as i64;
            rt.block_on(async {
                let u = users().await;
                u.update_one(doc! {"_id": 10 + r}, doc! {"$set": {"name": "renamed", "round": r}})
                    .await
                    .unwrap();
                u.delete_one(doc! {"_id": 100 + r}).await.unwrap();
                u.insert_one(doc! {"_id": 10_000 + r, "name": "late", "f": 1.5, "when": mongodb::bson::DateTime::from_millis(r)})
                    .await
                    .unwrap();
            })
        },
    );
    let c = consume(&kafka.bootstrap(), "docs");
    assert_exactly_once(&c);
    // The last record per key is the source's document, read back from
    // canonical extended JSON by the bson crate (types included); the
    // deleted ones end in tombstones.
    let key = |id: &Bson| {
        serde_json::json!({"db": "app", "collection": "users", "id": id.clone().into_canonical_extjson()})
            .to_string()
    };
    let source: Vec<Document> = rt.block_on(async {
        let mut cur = users().await.find(doc! {}).await.unwrap();
        let mut out = Vec::new();
        while cur.advance().await.unwrap() {
            out.push(cur.deserialize_current().unwrap());
        }
        out
    });
    assert_eq!(source.len(), 3000, "10 deleted, 10 inserted");
    for d in &source {
        let after = c
            .last
            .get(&key(d.get("_id").unwrap()))
            .cloned()
            .flatten()
            .unwrap_or_else(|| panic!("{d} is live in the topic"));
        let json: Value =
            serde_json::from_str(after.as_str().expect("`after` is a string")).unwrap();
        let got = Bson::try_from(json).unwrap();
        assert_eq!(got.as_document(), Some(d), "the topic's last record of {d}");
    }
    for r in 0..10i64 {
        assert!(
            c.last
                .get(&key(&Bson::Int64(100 + r)))
                .is_some_and(Option::is_none),
            "the deleted document {} ends in a tombstone",
            100 + r
        );
    }
    let live_docs = c.last.values().filter(|v| v.is_some()).count();
    assert_eq!(live_docs, source.len(), "no extra live document");
    assert!(c.ops.get("r").copied().unwrap_or(0) >= 3000, "{:?}", c.ops);
    // The 64-bit `_id` stays one in the key.
    assert!(c.last.contains_key(
        &serde_json::json!({"db": "app", "collection": "users", "id": {"$numberLong": "0"}})
            .to_string()
    ));
}

#[test]
fn vault_to_kafka_needs_the_flag_then_publishes_every_version_once_through_kills() {
    let _one = one_kill_test_at_a_time();
    use ferry_testkit::{http, OpenBao};
    let (Some(bao), Some(mut kafka)) = (require(OpenBao::start()), require(Kafka::start_durable()))
    else {
        return;
    };
    let token = bao.token().to_string();
    let write = |v: u32| {
        let body = serde_json::json!({"data": {"password": format!("pw-{v}")}}).to_string();
        let r = http::post(
            &bao.endpoint(),
            "/v1/secret/data/app/db",
            &[("X-Vault-Token", token.as_str())],
            &body,
        )
        .unwrap();
        assert!(r.status < 300, "{}", r.body);
    };
    for v in 1..=3 {
        write(v);
    }
    let f = Ferry::new();
    let (s, t) = (
        format!("vault://root@{}/secret/app", bao.endpoint()),
        kafka.url("secrets"),
    );
    let out = f.start(&s, &t, &["--source.read-only=external"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--kafka.publish-secrets"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    assert!(!f.journal().exists());
    // A new version after every kill: 3 + 10 in all.
    through_kills(
        &f,
        &mut kafka,
        (&s, &t),
        &["--source.read-only=external", "--kafka.publish-secrets"],
        10,
        |round| write(4 + round as u32),
    );
    let c = consume(&kafka.bootstrap(), "secrets");
    let last = c
        .last
        .get(&serde_json::json!({"path": "db"}).to_string())
        .cloned()
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "the secret is in the topic: {:?}",
                c.last.keys().collect::<Vec<_>>()
            )
        });
    assert_exactly_once(&c);
    assert_eq!(last["version"], 13, "{last}");
    assert_eq!(last["data"]["password"], "pw-13", "{last}");
    assert_eq!(
        last["metadata"]["version"], 13,
        "the version's metadata rides along: {last}"
    );
    assert_eq!(last["metadata"]["destroyed"], false, "{last}");
    // The Vault tailer snapshots again at every start (README: a restart
    // republishes every version as a read, `op: r`, under new sequences);
    // each event is still in the topic once.
    assert!(c.events.len() >= 13, "every version published: {:?}", c.ops);
}

#[test]
fn a_value_too_large_for_a_record_stops_its_shard_with_the_key_named() {
    let (Some(src), Some(kafka)) = (require(Etcd::start()), require(Kafka::start())) else {
        return;
    };
    let rt = rt();
    rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "big", 20).await;
        c.put("big/huge", vec![b'h'; 1_100_000], None)
            .await
            .unwrap();
    });
    let f = Ferry::new();
    ok(
        &f.start(
            &src.url("big"),
            &kafka.url("big"),
            &["--source.read-only=external", "--shards", "1"],
        ),
        "start",
    );
    let s = f.wait_for("the shard's error", Duration::from_secs(60), |s| {
        s.to_string().contains("more than Kafka's client sends")
    });
    assert!(
        s.to_string().contains("big/huge"),
        "the error names the key: {s}"
    );
    ok(&f.run(&["stop", "--abort"]), "stop --abort");
    f.wait_agent_exit(Duration::from_secs(30));
    let c = consume(&kafka.bootstrap(), "big");
    assert!(
        !c.last
            .contains_key(&serde_json::json!({"key": "big/huge"}).to_string()),
        "the record was not written"
    );
}

/// The source URL of `topic` for a downstream agent in group `group`.
fn relay_url(kafka: &Kafka, topic: &str, group: &str) -> String {
    format!("{}?group={group}", kafka.url(topic))
}

#[test]
fn etcd_to_kafka_to_etcd_across_two_agents_through_five_kills_downstream() {
    let (Some(src), Some(far), Some(kafka)) = (
        require(Etcd::start()),
        require(Etcd::start()),
        require(Kafka::start()),
    ) else {
        return;
    };
    let rt = rt();
    let (up, down) = (Ferry::new(), Ferry::new());
    let source_url = src.url("r");
    let topic_url = kafka.url("relay");
    let relay = relay_url(&kafka, "relay", "far");
    let far_url = far.url("far");
    let client = rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "r", 3_000).await;
        c
    });
    let writer = rt.block_on(async {
        Writer::spawn(
            client,
            "r".into(),
            3_500,
            100_000,
            Duration::from_micros(2000),
        )
    });
    let external = ["--source.read-only=external", "--shards", "3"];
    ok(
        &up.start(&source_url, &topic_url, &external),
        "upstream start",
    );
    up.wait_for(
        "upstream streaming",
        Duration::from_secs(120),
        all_streaming,
    );
    let mut rng = rand::thread_rng();
    let deadline = Instant::now() + Duration::from_secs(600);
    for round in 0..5 {
        assert!(
            Instant::now() < deadline,
            "the test exceeded its time bound"
        );
        ok(
            &down.start(&relay, &far_url, &["--source.read-only=external"]),
            &format!("downstream start (round {round})"),
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..2500)));
        down.kill_agent();
    }
    ok(
        &down.start(&relay, &far_url, &["--source.read-only=external"]),
        "downstream final start",
    );
    std::thread::sleep(Duration::from_secs(2));
    let written = rt.block_on(writer.finish());
    assert!(written.ops.load(std::sync::atomic::Ordering::Relaxed) > 0);
    // The upstream's cutover ends the stream; the downstream's fence then
    // reads every partition to that end.
    up.wait_for("upstream caught up", Duration::from_secs(120), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    ok(&up.run(&["stop", "--timeout", "120s"]), "upstream stop");
    up.wait_agent_exit(Duration::from_secs(30));
    down.wait_for(
        "downstream streaming",
        Duration::from_secs(120),
        all_streaming,
    );
    let out = down.run(&["stop", "--timeout", "120s"]);
    ok(&out, "downstream stop");
    down.wait_agent_exit(Duration::from_secs(30));
    let proof: Value =
        serde_json::from_slice(&std::fs::read(down.journal().join("cutover-proof.json")).unwrap())
            .unwrap();
    assert!(
        proof["verified_keys"].as_u64().unwrap_or(0) >= 1_000 && proof["differences"] == 0,
        "the downstream cutover verified the far target against the topic: {proof}"
    );
    // What matters: the far target holds what the source holds.
    let source = source_state(&rt, &src.endpoint(), "r/");
    let target: BTreeMap<String, String> = source_state(&rt, &far.endpoint(), "far/")
        .into_iter()
        .filter(|(k, _)| !k.starts_with("__ferry"))
        .map(|(k, v)| (format!("r/{}", k.strip_prefix("far/").unwrap()), v))
        .collect();
    assert_eq!(source.len(), target.len(), "as many keys at both ends");
    assert!(source == target, "the far target equals the source");
    ok(
        &down.run(&["verify", "--source", &source_url, "--target", &far_url]),
        "verify the source against the far target directly",
    );
}

/// Writes `records` (key, value) to partition 0 of `topic`, as a foreign
/// producer would.
fn produce_raw(bootstrap: &str, topic: &str, records: &[(&str, &[u8])]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for (k, v) in records {
        p.send(BaseRecord::to(topic).partition(0).key(*k).payload(*v))
            .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn put_envelope(key: &str, value: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "before": null,
        "after": {"key": key, "value": value, "lease": null},
        "op": "c",
        "source": {"connector": "ferry", "kind": "etcd", "name": "etcd://127.0.0.1:2379/m",
                   "position": 1, "shard": 1, "seq": 1, "snapshot": "false", "ts_ms": 0},
        "ts_ms": 0
    }))
    .unwrap()
}

#[test]
fn a_malformed_record_on_a_kafka_source_is_named_and_nothing_of_it_written() {
    let (Some(far), Some(kafka)) = (require(Etcd::start()), require(Kafka::start())) else {
        return;
    };
    let rt = rt();
    let far_url = far.url("m");
    rt.block_on(async {
        ferry_kafka::connector::ensure_topic(&kafka.bootstrap(), "first", 1)
            .await
            .unwrap();
        ferry_kafka::connector::ensure_topic(&kafka.bootstrap(), "later", 1)
            .await
            .unwrap();
    });
    // Without a group, and without the external switch: usage errors.
    let f = Ferry::new();
    for (url, extra, needle) in [
        (
            kafka.url("first"),
            vec!["--source.read-only=external"],
            "?group=NAME",
        ),
        (
            relay_url(&kafka, "first", "g"),
            vec![],
            "--source.read-only=external",
        ),
    ] {
        let out = f.start(&url, &far_url, &extra);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    }
    // A topic whose first record is not an event: refused before the start.
    produce_raw(&kafka.bootstrap(), "first", &[("x", b"not an event")]);
    let out = f.start(
        &relay_url(&kafka, "first", "g"),
        &far_url,
        &["--source.read-only=external"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("first/0 offset 0") && stderr(&out).contains("not JSON"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    // A bad record later: the records before it are applied, its shard
    // stops with the partition and offset named, nothing after it is written.
    let good = put_envelope("m/a", "1");
    let after = put_envelope("m/b", "2");
    produce_raw(
        &kafka.bootstrap(),
        "later",
        &[
            (r#"{"key":"m/a"}"#, &good),
            (r#"{"key":"m/x"}"#, br#"{"op": "c"}"#),
            (r#"{"key":"m/b"}"#, &after),
        ],
    );
    let f = Ferry::new();
    ok(
        &f.start(
            &relay_url(&kafka, "later", "g"),
            &far_url,
            &["--source.read-only=external", "--shards", "1"],
        ),
        "start",
    );
    let s = f.wait_for("the shard's error", Duration::from_secs(60), |s| {
        s.to_string().contains("later/0 offset 1")
    });
    assert!(s.to_string().contains("no `source`"), "{s}");
    // The shard's error is reported when the bad record is read; the good
    // record before it is journaled with the batch and applied after that.
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = loop {
        let held = source_state(&rt, &far.endpoint(), "m/");
        if held.contains_key("m/a") || Instant::now() > deadline {
            break held;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(held.get("m/a").map(String::as_str), Some("1"), "{held:?}");
    assert!(
        !held.contains_key("m/b") && !held.contains_key("m/x"),
        "{held:?}"
    );
    let out = f.run(&["stop", "--timeout", "20s"]);
    assert!(
        !out.status.success(),
        "the cutover cannot fence a stopped shard"
    );
    ok(&f.run(&["stop", "--abort"]), "stop --abort");
    f.wait_agent_exit(Duration::from_secs(30));
}

/// Documents of every common BSON type, in two collections.
async fn mongo_typed_load(uri: &str, n: i64) {
    use mongodb::bson::{doc, oid::ObjectId, Binary, DateTime, Document};
    let c = mongodb::Client::with_uri_str(uri).await.unwrap();
    let db = c.database("app");
    let docs: Vec<Document> = (0..n)
        .map(|i| {
            doc! {
                "_id": i, "small": i as i32, "ratio": i as f64 / 4.0, "whole": 2.0f64,
                "at": DateTime::from_millis(1_700_000_000_000 + i),
                "bytes": Binary { subtype: mongodb::bson::spec::BinarySubtype::Generic, bytes: vec![0, 255, i as u8] },
                "nested": {"tags": ["a", i as i32], "none": null},
            }
        })
        .collect();
    db.collection::<Document>("typed")
        .insert_many(docs)
        .await
        .unwrap();
    let oids: Vec<Document> = (0..50)
        .map(|i| doc! {"_id": ObjectId::new(), "n": i})
        .collect();
    db.collection::<Document>("oids")
        .insert_many(oids)
        .await
        .unwrap();
}

#[test]
fn mongodb_to_kafka_to_mongodb_across_two_agents_keeps_every_type() {
    use mongodb::bson::{doc, Document};
    let (Some(src), Some(far), Some(kafka)) = (
        require(ferry_testkit::Mongod::start()),
        require(ferry_testkit::Mongod::start()),
        require(Kafka::start()),
    ) else {
        return;
    };
    let rt = rt();
    rt.block_on(mongo_typed_load(&src.uri(), 800));
    let (up, down) = (Ferry::new(), Ferry::new());
    let source_url = format!("{}/app", src.uri());
    let far_url = format!("{}/app", far.uri());
    let relay = format!("{}&events=mongodb", relay_url(&kafka, "docs", "far"));
    let external = ["--source.read-only=external", "--shards", "2"];
    ok(
        &up.start(&source_url, &kafka.url("docs"), &external),
        "upstream start",
    );
    up.wait_for("upstream copied", Duration::from_secs(120), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    // Without `events=mongodb` the pair is refused, naming the parameter.
    let wrong = down.start(
        &relay_url(&kafka, "docs", "far"),
        &far_url,
        &["--source.read-only=external"],
    );
    assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));
    assert!(
        stderr(&wrong).contains("&events=mongodb"),
        "{}",
        stderr(&wrong)
    );
    ok(
        &down.start(&relay, &far_url, &["--source.read-only=external"]),
        "downstream start",
    );
    // Live changes while the downstream agent is killed twice.
    let deadline = Instant::now() + Duration::from_secs(300);
    for round in 0..2i64 {
        assert!(Instant::now() < deadline, "the test exceeded its bound");
        rt.block_on(async {
            let c = mongodb::Client::with_uri_str(src.uri()).await.unwrap();
            let typed = c.database("app").collection::<Document>("typed");
            typed
                .update_one(
                    doc! {"_id": round},
                    doc! {"$set": {"small": 7i32, "big": 9_000_000_000i64}},
                )
                .await
                .unwrap();
            typed.delete_one(doc! {"_id": 10 + round}).await.unwrap();
            typed
                .insert_one(doc! {"_id": 5_000 + round, "late": true})
                .await
                .unwrap();
        });
        std::thread::sleep(Duration::from_millis(700));
        down.kill_agent();
        ok(
            &down.start(&relay, &far_url, &["--source.read-only=external"]),
            &format!("downstream restart {round}"),
        );
    }
    up.wait_for("upstream caught up", Duration::from_secs(120), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    ok(&up.run(&["stop", "--timeout", "120s"]), "upstream stop");
    up.wait_agent_exit(Duration::from_secs(30));
    down.wait_for(
        "downstream streaming",
        Duration::from_secs(120),
        all_streaming,
    );
    ok(&down.run(&["stop", "--timeout", "120s"]), "downstream stop");
    down.wait_agent_exit(Duration::from_secs(30));
    let proof: Value =
        serde_json::from_slice(&std::fs::read(down.journal().join("cutover-proof.json")).unwrap())
            .unwrap();
    assert!(
        proof["verified_keys"].as_u64().unwrap_or(0) >= 800 && proof["differences"] == 0,
        "the downstream cutover verified the far target against the topic: {proof}"
    );
    // The real check: mongod's own documents, byte for byte and type for
    // type, at both ends.
    ok(
        &down.run(&["verify", "--source", &source_url, "--target", &far_url]),
        "verify the source against the far target directly",
    );
    rt.block_on(async {
        let c = mongodb::Client::with_uri_str(far.uri()).await.unwrap();
        let typed = c.database("app").collection::<Document>("typed");
        let d = typed.find_one(doc! {"_id": 1i64}).await.unwrap().unwrap();
        assert_eq!(
            d.get("big"),
            Some(&mongodb::bson::Bson::Int64(9_000_000_000))
        );
        assert_eq!(d.get("small"), Some(&mongodb::bson::Bson::Int32(7)));
        assert_eq!(d.get("whole"), Some(&mongodb::bson::Bson::Double(2.0)));
        let long_ids = typed
            .count_documents(doc! {"_id": {"$type": "long"}})
            .await
            .unwrap();
        assert_eq!(
            long_ids, 800,
            "798 copied + 2 inserted, every `_id` still a long"
        );
        assert!(typed.find_one(doc! {"_id": 10i64}).await.unwrap().is_none());
        let oids = c.database("app").collection::<Document>("oids");
        assert_eq!(oids.count_documents(doc! {}).await.unwrap(), 50);
    });
}

/// One Debezium MongoDB connector event with the JSON converter's schema
/// wrapper: (record key, value).
fn debezium(op: &str, id: &str, after: Option<&str>) -> (String, Vec<u8>) {
    let key = serde_json::json!({"schema": {"type": "struct"}, "payload": {"id": id}});
    let value = serde_json::json!({
        "schema": {"type": "struct", "name": "dbserver1.inventory.customers.Envelope"},
        "payload": {
            "after": after, "patch": null, "filter": null, "op": op, "ts_ms": 1_700_000_000_500u64,
            "source": {"version": "2.5.0.Final", "connector": "mongodb", "name": "dbserver1",
                       "ts_ms": 1_700_000_000_000u64, "snapshot": "false", "db": "inventory",
                       "rs": "rs0", "collection": "customers", "ord": 1}
        }
    });
    (key.to_string(), serde_json::to_vec(&value).unwrap())
}

#[test]
fn debezium_mongodb_events_on_a_topic_reach_mongodb_with_their_types() {
    use mongodb::bson::{doc, Bson, Document};
    let (Some(far), Some(kafka)) = (
        require(ferry_testkit::Mongod::start()),
        require(Kafka::start()),
    ) else {
        return;
    };
    let rt = rt();
    rt.block_on(ferry_kafka::connector::ensure_topic(
        &kafka.bootstrap(),
        "dbserver1.inventory.customers",
        1,
    ))
    .unwrap();
    let records = [
        debezium(
            "r",
            "1001",
            Some(
                r#"{"_id": {"$numberLong": "1001"}, "first_name": "Sally", "n": 3, "score": 1.0, "at": {"$date": 1700000000123}}"#,
            ),
        ),
        debezium(
            "r",
            "1002",
            Some(
                r#"{"_id": {"$numberLong": "1002"}, "first_name": "George", "bin": {"$binary": "AP8=", "$type": "00"}}"#,
            ),
        ),
        debezium(
            "c",
            "1003",
            Some(
                r#"{"_id": {"$numberLong": "1003"}, "first_name": "Edward", "re": {"$regex": "^e", "$options": "i"}}"#,
            ),
        ),
        debezium(
            "u",
            "1001",
            Some(
                r#"{"_id": {"$numberLong": "1001"}, "first_name": "Sally", "n": 4, "score": 1.5, "at": {"$date": 1700000000123}}"#,
            ),
        ),
        debezium("d", "1002", None),
    ];
    let mut raw: Vec<(&str, &[u8])> = records
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    // The delete's tombstone: a record with the key and no value.
    let tombstone_key = records[4].0.clone();
    produce_raw(&kafka.bootstrap(), "dbserver1.inventory.customers", &raw);
    produce_tombstone(
        &kafka.bootstrap(),
        "dbserver1.inventory.customers",
        &tombstone_key,
    );
    raw.clear();
    let f = Ferry::new();
    let source = format!(
        "{}?group=far&events=mongodb",
        kafka.url("dbserver1.inventory.customers")
    );
    let target = format!("{}/inventory", far.uri());
    ok(
        &f.start(&source, &target, &["--source.read-only=external"]),
        "start",
    );
    f.wait_for("streamed", Duration::from_secs(120), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    ok(&f.run(&["stop", "--timeout", "120s"]), "stop");
    f.wait_agent_exit(Duration::from_secs(30));
    rt.block_on(async {
        let c = mongodb::Client::with_uri_str(far.uri()).await.unwrap();
        let customers = c.database("inventory").collection::<Document>("customers");
        assert_eq!(customers.count_documents(doc! {}).await.unwrap(), 2);
        let sally = customers
            .find_one(doc! {"_id": 1001i64})
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sally.get("_id"), Some(&Bson::Int64(1001)));
        assert_eq!(sally.get("n"), Some(&Bson::Int32(4)), "the update's full document");
        assert_eq!(sally.get("score"), Some(&Bson::Double(1.5)));
        assert_eq!(
            sally.get("at"),
            Some(&Bson::DateTime(mongodb::bson::DateTime::from_millis(
                1_700_000_000_123
            )))
        );
        let keys: Vec<&str> = sally.keys().map(String::as_str).collect();
        assert_eq!(keys, ["_id", "first_name", "n", "score", "at"]);
        assert!(customers
            .find_one(doc! {"_id": 1002i64})
            .await
            .unwrap()
            .is_none());
        let edward = customers
            .find_one(doc! {"_id": 1003i64})
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(edward.get("re"), Some(Bson::RegularExpression(r)) if r.pattern == "^e" && r.options == "i"),
            "{edward}"
        );
    });
}

fn produce_tombstone(bootstrap: &str, topic: &str, key: &str) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    p.send(BaseRecord::<str, [u8]>::to(topic).partition(0).key(key))
        .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
}

#[test]
fn vault_to_kafka_to_vault_keeps_versions_states_and_settings() {
    use ferry_testkit::{http, OpenBao};
    let (Some(src), Some(far), Some(kafka)) = (
        require(OpenBao::start()),
        require(OpenBao::start()),
        require(Kafka::start()),
    ) else {
        return;
    };
    let post = |bao: &OpenBao, path: &str, body: serde_json::Value| {
        let r = http::post(
            &bao.endpoint(),
            path,
            &[("X-Vault-Token", bao.token())],
            &body.to_string(),
        )
        .unwrap();
        assert!(r.status < 300, "{path}: {}", r.body);
    };
    for v in 1..=3 {
        post(
            &src,
            "/v1/secret/data/app/db",
            serde_json::json!({"data": {"password": format!("pw-{v}"), "n": v}}),
        );
    }
    post(
        &src,
        "/v1/secret/metadata/app/db",
        serde_json::json!({"max_versions": 5, "custom_metadata": {"owner": "ops"}}),
    );
    post(
        &src,
        "/v1/secret/delete/app/db",
        serde_json::json!({"versions": [2]}),
    );
    post(
        &src,
        "/v1/secret/data/app/nested/api",
        serde_json::json!({"data": {"key": "k-1"}}),
    );
    let (up, down) = (Ferry::new(), Ferry::new());
    let source_url = format!("vault://root@{}/secret/app", src.endpoint());
    let far_url = format!("vault://root@{}/secret/app", far.endpoint());
    let relay = format!("{}&events=vault", relay_url(&kafka, "vault", "far"));
    ok(
        &up.start(
            &source_url,
            &kafka.url("vault"),
            &[
                "--source.read-only=external",
                "--kafka.publish-secrets",
                "--vault.poll-ms",
                "200",
            ],
        ),
        "upstream start",
    );
    up.wait_for("upstream copied", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    ok(
        &down.start(&relay, &far_url, &["--source.read-only=external"]),
        "downstream start",
    );
    // A live version while both agents run.
    post(
        &src,
        "/v1/secret/data/app/db",
        serde_json::json!({"data": {"password": "pw-4", "n": 4}}),
    );
    std::thread::sleep(Duration::from_secs(1));
    up.wait_for("upstream caught up", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    ok(&up.run(&["stop", "--timeout", "60s"]), "upstream stop");
    up.wait_agent_exit(Duration::from_secs(30));
    down.wait_for(
        "downstream streaming",
        Duration::from_secs(60),
        all_streaming,
    );
    ok(&down.run(&["stop", "--timeout", "60s"]), "downstream stop");
    down.wait_agent_exit(Duration::from_secs(30));
    let proof: Value =
        serde_json::from_slice(&std::fs::read(down.journal().join("cutover-proof.json")).unwrap())
            .unwrap();
    assert_eq!(proof["differences"], 0, "{proof}");
    // Vault's own answers at the far end, then Ferry's comparison of both
    // Vaults version by version.
    let meta: Value = serde_json::from_str(
        &http::get(
            &far.endpoint(),
            "/v1/secret/metadata/app/db",
            &[("X-Vault-Token", far.token())],
        )
        .unwrap()
        .body,
    )
    .unwrap();
    let d = &meta["data"];
    assert_eq!(d["current_version"], 4, "{meta}");
    assert_eq!(d["max_versions"], 5, "{meta}");
    assert_eq!(d["custom_metadata"]["owner"], "ops", "{meta}");
    assert_ne!(d["versions"]["2"]["deletion_time"], "", "{meta}");
    assert_eq!(d["versions"]["3"]["deletion_time"], "", "{meta}");
    let v3: Value = serde_json::from_str(
        &http::get(
            &far.endpoint(),
            "/v1/secret/data/app/db?version=3",
            &[("X-Vault-Token", far.token())],
        )
        .unwrap()
        .body,
    )
    .unwrap();
    assert_eq!(v3["data"]["data"]["password"], "pw-3", "{v3}");
    assert_eq!(v3["data"]["data"]["n"], 3, "{v3}");
    ok(
        &down.run(&["verify", "--source", &source_url, "--target", &far_url]),
        "verify the source Vault against the far Vault directly",
    );
}

#[test]
fn a_json_file_through_kafka_lands_in_an_etcd_key_as_equal_json() {
    let (Some(far), Some(kafka)) = (require(Etcd::start()), require(Kafka::start())) else {
        return;
    };
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.json");
    let doc =
        serde_json::json!({"db": {"host": "10.0.0.1", "port": 5432}, "list": [1, "two", null]});
    std::fs::write(&file, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let (up, down) = (Ferry::new(), Ferry::new());
    ok(
        &up.start(
            file.to_str().unwrap(),
            &kafka.url("conf"),
            &["--source.read-only=external", "--kafka.publish-secrets"],
        ),
        "upstream start",
    );
    up.wait_for("upstream copied", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    let far_url = far.url("config");
    let relay = format!("{}&events=file", relay_url(&kafka, "conf", "far"));
    ok(
        &down.start(&relay, &far_url, &["--source.read-only=external"]),
        "downstream start",
    );
    // The file changes while both run.
    let changed = serde_json::json!({"db": {"host": "10.0.0.2", "port": 5432}, "list": []});
    std::fs::write(&file, serde_json::to_string_pretty(&changed).unwrap()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    up.wait_for("upstream caught up", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    ok(&up.run(&["stop", "--timeout", "60s"]), "upstream stop");
    up.wait_agent_exit(Duration::from_secs(30));
    down.wait_for(
        "downstream streaming",
        Duration::from_secs(60),
        all_streaming,
    );
    ok(&down.run(&["stop", "--timeout", "60s"]), "downstream stop");
    down.wait_agent_exit(Duration::from_secs(30));
    let stored = source_state(&rt, &far.endpoint(), "config");
    let value: Value = serde_json::from_str(&stored["config"]).unwrap();
    assert_eq!(
        value, changed,
        "the etcd key holds the file's last document"
    );
}
