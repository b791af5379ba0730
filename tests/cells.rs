//! The one-command Cells migration: a sample Cells home (real Bolt files
//! written by the bbolt library, the JSON config, vault and keyring) moves
//! live to a real mongod, etcd and OpenBao while a writer keeps changing it;
//! the cutover waits for the writer's locks; the target verifies equal and
//! holds Cells' document shapes; a second run changes nothing.

#[path = "bolt-fixture/fixture.rs"]
mod fixture;

use ferry_testkit::{http, require, Etcd, Kafka, Mongod, OpenBao};
use ferry_tests::harness::*;
use mongodb::bson::{doc, Document};
use rand::Rng;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn sample_home(bin: &Path, dir: &Path) -> PathBuf {
    let home = dir.join("cells");
    std::fs::create_dir_all(&home).unwrap();
    fixture::run(bin, "cells-home", &home, &[]);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cells");
    for f in ["pydio.json", "pydio-vault.json", "cells-vault-key"] {
        std::fs::copy(fixtures.join(f), home.join(f)).unwrap();
    }
    // certmagic's layout: an ACME account and a site certificate with its key.
    let site =
        home.join("certs/certificates/acme-v02.api.letsencrypt.org-directory/cells.example.com");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(
        site.join("cells.example.com.crt"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        site.join("cells.example.com.key"),
        "-----BEGIN EC PRIVATE KEY-----\nsecret-key-material\n-----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(
        site.join("cells.example.com.json"),
        r#"{"sans":["cells.example.com"]}"#,
    )
    .unwrap();
    home
}

/// Cells' Vault certificate storage lives in its own KV v2 mount.
fn enable_caddycerts(bao: &OpenBao) {
    let r = http::post(
        &bao.endpoint(),
        "/v1/sys/mounts/caddycerts",
        &[("X-Vault-Token", "root")],
        r#"{"type":"kv","options":{"version":"2"}}"#,
    )
    .unwrap();
    assert!(r.status < 300, "{}", r.body);
}

/// A writer that keeps the Cells home's Bolt files open (locks held) and
/// changes them, as a running Cells does, for `secs`.
fn live_writer(bin: &Path, home: &Path, secs: u64) -> Child {
    Command::new(bin)
        .arg("cells-live")
        .arg(home)
        .args(["-for", &format!("{secs}s")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stops the live writer as Cells stops (SIGTERM: it closes the files and
/// releases their locks); checks it ended well and returns its report.
fn stop_writer(writer: Child) -> String {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(writer.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn start(f: &Ferry, source: &str, targets: &[String], extra: &[&str]) -> std::process::Output {
    let listen = format!("127.0.0.1:{}", f.port);
    let mut args = vec![
        "start",
        "--no-monitor",
        "--agent.listen",
        &listen,
        "--source",
        source,
    ];
    for t in targets {
        args.extend(["--target", t.as_str()]);
    }
    args.extend_from_slice(extra);
    f.run(&args)
}

fn verify(f: &Ferry, source: &str, targets: &[String]) -> std::process::Output {
    let mut args = vec!["verify", "--source", source];
    for t in targets {
        args.extend(["--target", t.as_str()]);
    }
    f.run(&args)
}

fn collections(uri: &str) -> Vec<(String, u64)> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = mongodb::Client::with_uri_str(uri).await.unwrap();
        let db = c.database("cells");
        let mut names = db.list_collection_names().await.unwrap();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            let count = db
                .collection::<Document>(&n)
                .count_documents(doc! {})
                .await
                .unwrap();
            out.push((n, count));
        }
        out
    })
}

fn find_one(uri: &str, coll: &str, filter: Document) -> Document {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = mongodb::Client::with_uri_str(uri).await.unwrap();
        c.database("cells")
            .collection::<Document>(coll)
            .find_one(filter.clone())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no document {filter} in {coll}"))
    })
}

#[test]
fn a_live_cells_home_migrates_with_one_command_and_cuts_over() {
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
    let home = sample_home(&bin, f.dir.path());
    let source = format!("cells://{}", home.display());
    let targets = vec![
        format!("{}/cells", mongo.uri()),
        etcd.url("config"),
        format!("vault://root@{}/secret/cells/keyring", bao.endpoint()),
    ];
    enable_caddycerts(&bao);
    // Runs until told to stop (SIGTERM, below), as Cells would.
    let writer = live_writer(&bin, &home, 300);
    std::thread::sleep(Duration::from_millis(500));
    ok(
        &start(
            &f,
            &source,
            &targets,
            &["--shards", "2", "--source.read-only=external"],
        ),
        "start",
    );
    // SIGKILL at random moments while Cells writes; each start resumes.
    let mut rng = rand::thread_rng();
    for round in 0..10 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..900)));
        f.kill_agent();
        ok(
            &start(
                &f,
                &source,
                &targets,
                &["--shards", "2", "--source.read-only=external"],
            ),
            &format!("restart {round}"),
        );
    }
    f.wait_for("streaming", Duration::from_secs(120), all_streaming);
    // While Cells holds its Bolt locks the cutover cannot make them read-only:
    // it fails in one sentence, opens nothing, and the sync goes on.
    // Within the cutover's lag gate, so the refusal below is the locks'.
    f.wait_for("lag under the gate", Duration::from_secs(120), |s| {
        all_streaming(s) && max_lag(s) < 500
    });
    let out = f.run(&["stop", "--timeout", "30s"]);
    assert!(
        !out.status.success(),
        "a cutover with Cells running succeeded"
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("is Cells still running"), "{all}");
    // Cells stops: its writer closes the files and releases their locks.
    let written = stop_writer(writer);
    assert!(fixture::field(&written, "docstore-puts") > 0, "{written}");
    f.wait_for("caught up", Duration::from_secs(120), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    let out = f.run(&["stop", "--timeout", "120s"]);
    ok(&out, "stop");
    f.wait_agent_exit(Duration::from_secs(30));
    let proof: Value =
        serde_json::from_slice(&std::fs::read(f.journal().join("cutover-proof.json")).unwrap())
            .unwrap();
    assert_eq!(proof["differences"], 0, "{proof}");
    let steps = proof["next_steps"].to_string();
    assert!(
        steps.contains("CELLS_CONFIG=etcd://") && steps.contains("cells admin resync"),
        "{steps}"
    );

    let out = verify(&f, &source, &targets);
    ok(&out, "verify");
    // Where Cells reads them (the shapes: tests/cells_conformance.rs).
    let uri = mongo.uri();
    let d = find_one(
        &uri,
        "docstore_documents",
        doc! {"store_id": "meta", "doc_id": "meta-doc-001"},
    );
    assert!(d.get_document("data").unwrap().contains_key("Path"), "{d}");
    assert!(d.get_str("raw").unwrap().starts_with('{'));
    let a = find_one(
        &uri,
        "activity_activities",
        doc! {"owner_type": 1, "owner_id": "alice", "box_name": "outbox"},
    );
    assert!(
        a.get_document("object").unwrap().contains_key("type"),
        "{a}"
    );
    assert!(a.get_i64("ts").unwrap() > 1_700_000_000_000_000_000);
    let s = find_one(&uri, "activity_subscriptions", doc! {"userid": "bob"});
    assert!(s.get_array("events").unwrap().len() == 2, "{s}");
    find_one(
        &uri,
        "activity_markers",
        doc! {"box_name": "lastread", "user_id": "carol"},
    );
    find_one(&uri, "chat_rooms", doc! {"uuid": "room-node-1"});
    find_one(&uri, "chat_messages", doc! {"roomuuid": "room-user-0"});
    let v = find_one(
        &uri,
        "versions_versions",
        doc! {"node_uuid": "node-uuid-0003"},
    );
    assert!(
        v.get_str("version_id").unwrap().starts_with("version-3-"),
        "{v}"
    );
    find_one(
        &uri,
        "jobs_jobs",
        doc! {"id": "job-07", "has_schedule": true},
    );
    find_one(&uri, "jobs_tasks", doc! {"job_id": "job-03"});
    // The live writer sends (deletes) queued mails as often as it queues
    // them, so the queue may be empty at the end: its count must match.
    let queued = ferry_bolt::BoltFile::open(home.join("services/pydio.grpc.mailer/queue.db"))
        .unwrap()
        .read_all()
        .unwrap()
        .1
        .iter()
        .filter(|e| e.value.is_some() && e.buckets == [b"MailerQueue".to_vec()])
        .count() as u64;
    let in_mongo = collections(&uri)
        .into_iter()
        .find(|(n, _)| n == "mailer_mailqueues")
        .map_or(0, |(_, c)| c);
    assert_eq!(in_mongo, queued);
    // Config and keyring where Cells reads them.
    let cfg = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = connect(&etcd.endpoint(), None).await;
        c.get("config", None).await.unwrap().kvs()[0]
            .value()
            .to_vec()
    });
    assert_eq!(cfg, std::fs::read(home.join("pydio.json")).unwrap());
    let kr = http::get(
        &bao.endpoint(),
        "/v1/secret/data/cells/keyring",
        &[("X-Vault-Token", "root")],
    )
    .unwrap();
    assert!(kr.body.contains("keyring.master"), "{}", kr.body);
    let key = "certificates/acme-v02.api.letsencrypt.org-directory/cells.example.com/cells.example.com.key";
    let cert = http::get(
        &bao.endpoint(),
        &format!("/v1/caddycerts/data/{key}"),
        &[("X-Vault-Token", "root")],
    )
    .unwrap();
    let cert: Value = serde_json::from_str(&cert.body).unwrap();
    assert!(
        cert["data"]["data"][key]
            .as_str()
            .unwrap()
            .contains("secret-key-material"),
        "{cert}"
    );
    assert!(steps.contains("CELLS_CERTS_STORE=vault://"), "{steps}");

    // Running the whole migration again changes nothing: same documents,
    // same counts (Cells' own migrators would duplicate every activity,
    // message and version).
    let before = collections(&uri);
    let g = Ferry::new();
    ok(
        &start(
            &g,
            &source,
            &targets,
            &["--shards", "2", "--source.read-only=external", "--force"],
        ),
        "second start",
    );
    g.wait_for("caught up", Duration::from_secs(120), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    ok(&g.run(&["stop", "--timeout", "120s"]), "second stop");
    g.wait_agent_exit(Duration::from_secs(30));
    assert_eq!(collections(&uri), before);
    ok(
        &verify(&g, &source, &targets),
        "verify after the second run",
    );
}

#[test]
fn bad_cells_homes_are_refused_in_one_sentence() {
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
    let targets = vec![
        format!("{}/cells", mongo.uri()),
        etcd.url("config"),
        format!("vault://root@{}/secret/cells/keyring", bao.endpoint()),
    ];
    let home = sample_home(&bin, f.dir.path());
    let broken = f.dir.path().join("broken");
    std::fs::create_dir_all(broken.join("services/pydio.grpc.jobs")).unwrap();
    for n in ["pydio.json", "pydio-vault.json", "cells-vault-key"] {
        std::fs::copy(home.join(n), broken.join(n)).unwrap();
    }
    let check = |home: &Path, targets: &[String], code: i32, needle: &str| {
        let out = start(
            &f,
            &format!("cells://{}", home.display()),
            targets,
            &["--source.read-only=external"],
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}: {}",
            home.display(),
            stderr(&out)
        );
        let err = stderr(&out);
        assert!(err.contains(needle), "{}: {err}", home.display());
        assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
        assert!(!f.journal().exists());
    };
    // Not a Bolt database, then a truncated one.
    std::fs::write(
        broken.join("services/pydio.grpc.jobs/jobs.db"),
        b"not a bolt file at all",
    )
    .unwrap();
    check(&broken, &targets, 2, "jobs.db");
    let good = std::fs::read(home.join("services/pydio.grpc.jobs/jobs.db")).unwrap();
    std::fs::write(
        broken.join("services/pydio.grpc.jobs/jobs.db"),
        &good[..good.len() / 3],
    )
    .unwrap();
    check(&broken, &targets, 2, "jobs.db");
    // Missing files; an unknown layout; a missing target kind.
    std::fs::remove_file(broken.join("cells-vault-key")).unwrap();
    check(&broken, &targets, 2, "missing cells-vault-key");
    std::fs::copy(home.join("cells-vault-key"), broken.join("cells-vault-key")).unwrap();
    std::fs::remove_dir_all(broken.join("services")).unwrap();
    check(&broken, &targets, 2, "unknown layout");
    check(&home, &targets[..2], 2, "needs a vault target");
    // Nothing reached the targets.
    assert!(collections(&mongo.uri()).iter().all(|(_, n)| *n == 0));
}

/// What each Bolt file of `home` holds, mapped to the documents Cells
/// reads: (service, collection, _id) → the document as relaxed extended
/// JSON with `_id` first, as a Kafka consumer sees it.
fn mapped_home(bin: &Path, home: &Path) -> std::collections::BTreeMap<String, Value> {
    use ferry_cells::{map, CellsHome, MapOptions};
    let mut out = std::collections::BTreeMap::new();
    for (service, path) in CellsHome::open(home).unwrap().bolts {
        fixture::run(bin, "dump", &path, &[]);
        for ((buckets, key), value) in fixture::read_dump(&path) {
            let Some(value) = value else { continue };
            if let Ok(Some(m)) = map(
                service,
                &MapOptions::default(),
                &buckets,
                &key,
                Some(&value),
            ) {
                let mut d = Document::new();
                d.insert("_id", m.id.clone());
                d.extend(m.doc.unwrap());
                let k = serde_json::json!({"service": service.name(), "collection": m.collection, "id": m.id});
                out.insert(
                    k.to_string(),
                    mongodb::bson::Bson::Document(d).into_relaxed_extjson(),
                );
            }
        }
    }
    out
}

#[test]
fn a_live_cells_home_publishes_each_service_to_its_own_topic() {
    let Some(bin) = fixture::program() else {
        return;
    };
    let Some(kafka) = require(Kafka::start()) else {
        return;
    };
    let f = Ferry::new();
    let home = sample_home(&bin, f.dir.path());
    let source = format!("cells://{}", home.display());
    let targets = vec![kafka.url("cells")];
    let args = ["--shards", "2", "--source.read-only=external"];
    let writer = live_writer(&bin, &home, 300);
    std::thread::sleep(Duration::from_millis(500));
    ok(&start(&f, &source, &targets, &args), "start");
    let mut rng = rand::thread_rng();
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..1500)));
        f.kill_agent();
        ok(
            &start(&f, &source, &targets, &args),
            &format!("restart {round}"),
        );
    }
    f.wait_for("streaming", Duration::from_secs(120), all_streaming);
    stop_writer(writer);
    f.wait_for("caught up", Duration::from_secs(120), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    ok(&f.run(&["stop", "--timeout", "120s"]), "stop");
    f.wait_agent_exit(Duration::from_secs(30));
    let proof: Value =
        serde_json::from_slice(&std::fs::read(f.journal().join("cutover-proof.json")).unwrap())
            .unwrap();
    assert_eq!(proof["differences"], 0, "{proof}");
    let steps = proof["next_steps"].to_string();
    assert!(
        steps.contains("cells.pydio.grpc.docstore")
            && steps.contains("not published, because they hold secrets"),
        "{steps}"
    );
    // The secrets went nowhere.
    let rt = tokio::runtime::Runtime::new().unwrap();
    for t in [
        "cells.config",
        "cells.vault",
        "cells.keyring",
        "cells.certs",
    ] {
        let p = rt
            .block_on(ferry_kafka::connector::partitions(&kafka.bootstrap(), t))
            .unwrap();
        assert_eq!(p, None, "{t} was created");
    }
    // A plain consumer's last record per key is the document Cells reads
    // from the Bolt files' final state, each event once.
    let expected = mapped_home(&bin, &home);
    let mut published = std::collections::BTreeMap::new();
    for service in ferry_cells::Service::ALL {
        let topic = format!("cells.{}", service.name());
        if rt
            .block_on(ferry_kafka::connector::partitions(
                &kafka.bootstrap(),
                &topic,
            ))
            .unwrap()
            .is_none()
        {
            continue;
        }
        let c = ferry_tests::topic::consume(&kafka.bootstrap(), &topic);
        let mut seen = std::collections::HashSet::new();
        assert!(
            c.events.iter().all(|e| seen.insert(*e)),
            "{topic}: an event twice"
        );
        assert_eq!(c.deletes_without_tombstone, 0, "{topic}");
        for (k, last) in c.last {
            if let Some(after) = last {
                if serde_json::from_str::<Value>(&k)
                    .unwrap()
                    .get("id")
                    .is_some()
                {
                    published.insert(k, after);
                }
            }
        }
    }
    assert!(
        expected.len() > 100,
        "the sample holds documents: {}",
        expected.len()
    );
    for (k, doc) in &expected {
        assert_eq!(published.get(k), Some(doc), "{k}");
    }
    assert_eq!(
        published.len(),
        expected.len(),
        "no document the source lacks"
    );
    let docstore = published
        .values()
        .find(|d| d["store_id"] == "meta" && d["doc_id"] == "meta-doc-001")
        .expect("meta-doc-001 is published");
    assert!(docstore["data"].get("Path").is_some(), "{docstore}");
}
