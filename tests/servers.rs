//! The real servers the testkit starts actually work: each test starts one
//! and does a round trip through its real protocol.
//!
//! A server that is not installed skips the test on a developer's machine
//! and fails it in CI (`ferry_testkit::require`).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use ferry_testkit::{base64_decode, base64_encode, http, require, Etcd, MongoWire, OpenBao};
use serde_json::{json, Value};

fn json_of(r: &http::Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

fn etcd_put(etcd: &Etcd, key: &str, value: &str) -> i64 {
    let body =
        json!({ "key": base64_encode(key.as_bytes()), "value": base64_encode(value.as_bytes()) });
    let r = http::post(&etcd.endpoint(), "/v3/kv/put", &[], &body.to_string()).unwrap();
    assert_eq!(r.status, 200, "put: {}", r.body);
    // The gateway renders int64 fields as JSON strings.
    json_of(&r)["header"]["revision"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The value stored under `key`, `None` when absent.
fn etcd_get(etcd: &Etcd, key: &str) -> Option<String> {
    let body = json!({ "key": base64_encode(key.as_bytes()) });
    let r = http::post(&etcd.endpoint(), "/v3/kv/range", &[], &body.to_string()).unwrap();
    assert_eq!(r.status, 200, "range: {}", r.body);
    let v = json_of(&r);
    let kv = v["kvs"].as_array()?.first()?.clone();
    assert_eq!(kv["key"], base64_encode(key.as_bytes()));
    let bytes = base64_decode(kv["value"].as_str().unwrap_or("")).expect("value is base64");
    Some(String::from_utf8(bytes).unwrap())
}

/// True once `endpoint` refuses connections, within 10 s: a server
/// stopped or killed under wine may keep its port open for a moment after
/// the process is reaped (seen once in CI right after a SIGKILL).
fn refuses_connections(endpoint: &str) -> bool {
    let addr = endpoint.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return true,
            _ if std::time::Instant::now() > deadline => return false,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn etcd_put_then_get_through_json_gateway_and_etcdctl() {
    let Some(etcd) = require(Etcd::start()) else {
        return;
    };
    eprintln!("etcd ready in {:?}", etcd.started_in());
    assert!(etcd.endpoint().starts_with("127.0.0.1:"));
    assert_eq!(
        etcd.url("/app"),
        format!("etcd://127.0.0.1:{}/app", etcd.client_port())
    );
    assert!(etcd.pid().is_some());

    assert_eq!(etcd_get(&etcd, "ferry/a"), None);
    let rev = etcd_put(&etcd, "ferry/a", "héllo wörld");
    assert!(
        rev >= 2,
        "first write on a fresh cluster is revision 2, got {rev}"
    );
    assert_eq!(etcd_get(&etcd, "ferry/a").as_deref(), Some("héllo wörld"));

    // A second, independent client over gRPC (what Ferry uses) sees the write.
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoint(), "--dial-timeout=5s"])
        .args(["get", "ferry/a", "--print-value-only"])
        .output()
        .expect("etcdctl (Debian etcd-client) runs; run deploy/local/install.sh");
    assert!(
        out.status.success(),
        "etcdctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "héllo wörld"
    );
}

#[test]
fn etcd_restart_keeps_ports_and_data() {
    let Some(mut etcd) = require(Etcd::start()) else {
        return;
    };
    let endpoint = etcd.endpoint();
    let first_pid = etcd.pid().unwrap();
    etcd_put(&etcd, "ferry/durable", "v1");

    etcd.stop();
    assert_eq!(etcd.pid(), None);
    assert!(!etcd.is_running());
    assert!(
        refuses_connections(&endpoint),
        "etcd still answers after stop"
    );
    etcd.stop(); // idempotent

    etcd.restart().unwrap();
    eprintln!("etcd restarted in {:?}", etcd.started_in());
    assert_eq!(etcd.endpoint(), endpoint);
    assert_ne!(etcd.pid(), Some(first_pid));
    assert_eq!(etcd_get(&etcd, "ferry/durable").as_deref(), Some("v1"));

    // Restart while running kills the old process first.
    let pid = etcd.pid().unwrap();
    etcd.restart().unwrap();
    assert_ne!(etcd.pid(), Some(pid));
    assert_eq!(etcd_get(&etcd, "ferry/durable").as_deref(), Some("v1"));
}

#[test]
fn openbao_kv_v2_write_and_read_back() {
    let Some(bao) = require(OpenBao::start()) else {
        return;
    };
    eprintln!("openbao ready in {:?}", bao.started_in());
    assert_eq!(bao.addr(), format!("http://127.0.0.1:{}", bao.port()));
    assert_eq!(
        bao.url("secret/app"),
        format!("vault://127.0.0.1:{}/secret/app", bao.port())
    );
    let token = [("X-Vault-Token", bao.token())];
    let secret = json!({ "user": "ferry", "password": "p@ss wörd", "n": "42" });

    let w = http::post(
        &bao.endpoint(),
        "/v1/secret/data/ferry/x",
        &token,
        &json!({ "data": secret }).to_string(),
    )
    .unwrap();
    assert_eq!(w.status, 200, "write: {}", w.body);
    assert_eq!(json_of(&w)["data"]["version"], 1);

    let r = http::get(&bao.endpoint(), "/v1/secret/data/ferry/x", &token).unwrap();
    assert_eq!(r.status, 200, "read: {}", r.body);
    let v = json_of(&r);
    assert_eq!(v["data"]["data"], secret);
    assert_eq!(v["data"]["metadata"]["version"], 1);

    // The token is really checked, and a missing path is a plain 404.
    let anon = http::get(&bao.endpoint(), "/v1/secret/data/ferry/x", &[]).unwrap();
    assert_eq!(anon.status, 403, "{}", anon.body);
    let missing = http::get(&bao.endpoint(), "/v1/secret/data/ferry/none", &token).unwrap();
    assert_eq!(missing.status, 404, "{}", missing.body);
}

#[test]
fn openbao_restart_is_a_fresh_dev_server_on_the_same_port() {
    let Some(mut bao) = require(OpenBao::start()) else {
        return;
    };
    let token = [("X-Vault-Token", bao.token())];
    let w = http::post(
        &bao.endpoint(),
        "/v1/secret/data/gone",
        &token,
        r#"{"data":{"k":"v"}}"#,
    )
    .unwrap();
    assert_eq!(w.status, 200, "{}", w.body);

    bao.stop();
    assert!(refuses_connections(&bao.endpoint()));
    bao.restart().unwrap();
    // Dev mode is in memory: the secret is gone, the root token works again.
    let r = http::get(&bao.endpoint(), "/v1/secret/data/gone", &token).unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
}

/// Sends MongoDB's `hello` as an OP_MSG and returns the reply's body bytes.
/// Just enough wire protocol to prove a MongoDB server answers, not a driver.
fn mongo_hello(endpoint: &str) -> Vec<u8> {
    // BSON { hello: 1 (int32), $db: "admin" }
    let mut doc = Vec::new();
    doc.extend_from_slice(b"\x10hello\x00");
    doc.extend_from_slice(&1i32.to_le_bytes());
    doc.extend_from_slice(b"\x02$db\x00");
    doc.extend_from_slice(&6i32.to_le_bytes());
    doc.extend_from_slice(b"admin\x00\x00");
    let doc_len = (doc.len() + 4) as i32;
    let mut body = Vec::new();
    body.extend_from_slice(&0u32.to_le_bytes()); // flagBits
    body.push(0); // section kind 0: the command document
    body.extend_from_slice(&doc_len.to_le_bytes());
    body.extend_from_slice(&doc);
    let mut msg = Vec::new();
    msg.extend_from_slice(&((16 + body.len()) as i32).to_le_bytes());
    msg.extend_from_slice(&7i32.to_le_bytes()); // requestID
    msg.extend_from_slice(&0i32.to_le_bytes()); // responseTo
    msg.extend_from_slice(&2013i32.to_le_bytes()); // OP_MSG
    msg.extend_from_slice(&body);

    let mut s = TcpStream::connect(endpoint).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&msg).unwrap();
    let mut header = [0u8; 16];
    s.read_exact(&mut header).unwrap();
    let len = i32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    assert_eq!(
        i32::from_le_bytes(header[8..12].try_into().unwrap()),
        7,
        "responseTo"
    );
    assert_eq!(
        i32::from_le_bytes(header[12..16].try_into().unwrap()),
        2013,
        "opCode"
    );
    assert!((21..16 << 20).contains(&len), "reply length {len}");
    let mut rest = vec![0u8; len - 16];
    s.read_exact(&mut rest).unwrap();
    rest
}

fn assert_hello_ok(endpoint: &str) {
    let reply = mongo_hello(endpoint);
    let has = |needle: &[u8]| reply.windows(needle.len()).any(|w| w == needle);
    // `ok: 1.0` as a BSON double, and the primary flag drivers look for.
    let mut ok = b"\x01ok\x00".to_vec();
    ok.extend_from_slice(&1.0f64.to_le_bytes());
    assert!(
        has(&ok),
        "hello reply lacks ok: 1.0: {}",
        String::from_utf8_lossy(&reply)
    );
    assert!(
        has(b"\x08isWritablePrimary\x00\x01"),
        "not a writable primary"
    );
}

#[test]
fn secantusdb_starts_stops_and_restarts_on_the_same_storage() {
    let Some(mut db) = require(MongoWire::start()) else {
        return;
    };
    eprintln!("secantusdb ready in {:?}", db.started_in());
    assert_eq!(db.uri(), format!("mongodb://127.0.0.1:{}", db.port()));
    let endpoint = db.endpoint();
    assert_hello_ok(&endpoint);
    let storage = db.storage_dir();
    assert!(
        storage.join("WiredTiger").exists(),
        "no WiredTiger home in {}",
        storage.display()
    );

    db.stop();
    assert_eq!(db.pid(), None);
    assert!(refuses_connections(&endpoint), "still accepting after stop");

    db.restart().unwrap();
    eprintln!("secantusdb restarted in {:?}", db.started_in());
    assert_eq!(db.endpoint(), endpoint);
    assert_eq!(db.storage_dir(), storage);
    assert_hello_ok(&endpoint);

    db.restart().unwrap();
    assert!(db.is_running());
    assert_hello_ok(&endpoint);
}

/// The real mongod (under wine): a one-member replica set whose writes
/// survive a clean stop and a SIGKILL (journal recovery), on the same port.
#[test]
fn mongod_is_a_primary_and_keeps_its_data_over_stop_and_kill() {
    use ferry_testkit::Mongod;
    use mongodb::bson::{doc, Document};
    let Some(mut db) = require(Mongod::start()) else {
        return;
    };
    eprintln!("mongod ready in {:?}", db.started_in());
    assert_eq!(db.uri(), format!("mongodb://127.0.0.1:{}", db.port()));
    assert_eq!(db.admin_command("ping"), Ok(true));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let uri = db.uri();
    let count = |n: i64| {
        rt.block_on(async {
            let c = mongodb::Client::with_uri_str(&uri).await.unwrap();
            let coll = c.database("t").collection::<Document>("a");
            if n > 0 {
                coll.insert_one(doc! {"_id": n}).await.unwrap();
            }
            let hello = c
                .database("admin")
                .run_command(doc! {"hello": 1})
                .await
                .unwrap();
            assert_eq!(
                hello.get_str("setName"),
                Ok(ferry_testkit::MONGOD_REPLICA_SET)
            );
            assert_eq!(hello.get_bool("isWritablePrimary"), Ok(true));
            coll.count_documents(doc! {}).await.unwrap()
        })
    };
    assert_eq!(count(1), 1);
    let endpoint = db.endpoint();
    db.stop();
    assert_eq!(db.pid(), None);
    assert!(refuses_connections(&endpoint), "still accepting after stop");
    db.start_again().unwrap();
    eprintln!("mongod restarted in {:?}", db.started_in());
    assert_eq!(count(2), 2);
    db.kill();
    assert!(refuses_connections(&endpoint), "still accepting after kill");
    db.start_again().unwrap();
    eprintln!("mongod recovered from SIGKILL in {:?}", db.started_in());
    assert_eq!(count(0), 2);
    db.restart().unwrap();
    assert!(db.is_running());
    assert_eq!(count(3), 3);
}

/// The shipped alert rules load in Prometheus's own checker, each alert's
/// unit test passes (`deploy/prometheus/ferry-alerts.test.yml`: fires after
/// its `for` on the series that should fire it, not before), and every
/// metric the rules and the Grafana dashboard query is one the agent
/// exports.
#[test]
fn the_shipped_alert_rules_pass_promtool_and_query_only_exported_metrics() {
    let Some(promtool) = require(ferry_testkit::promtool()) else {
        return;
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for args in [
        vec!["check", "rules", "ferry-alerts.yml"],
        vec!["test", "rules", "ferry-alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let exported: std::collections::BTreeSet<&str> = ferry_core::metric_names::DESCRIPTIONS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    for file in [
        dir.join("ferry-alerts.yml"),
        dir.join("../grafana/ferry-dashboard.json"),
    ] {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut used = 0;
        for (i, _) in text.match_indices("ferry_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Labels and job names are not metrics; histograms add suffixes.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            if name.starts_with("ferry_") && !exported.contains(base) {
                panic!(
                    "{} queries {name}, which the agent does not export",
                    file.display()
                );
            }
            used += 1;
        }
        assert!(used > 0, "{} queries no Ferry metric", file.display());
    }
}

/// The shipped systemd unit passes `systemd-analyze verify` without a
/// single warning (an unknown or misspelt key is only a warning there, so
/// any output fails the test), pointed at this build's `ferry`, and keeps
/// the settings the deployment depends on.
#[test]
fn the_systemd_unit_verifies_cleanly() {
    let Some(analyze) = require(ferry_testkit::systemd_analyze()) else {
        return;
    };
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/ferry.service"),
    )
    .unwrap();
    for needed in [
        "StateDirectory=ferry",
        "Environment=FERRY_JOURNAL=/var/lib/ferry/journal",
        "EnvironmentFile=/etc/ferry/ferry.env",
        "ExecStart=/usr/local/bin/ferry start --foreground --no-monitor",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.service");
    let ferry = ferry_tests::ferry_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/ferry", &ferry.display().to_string()),
    )
    .unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

/// The YAML documents of `file`, parsed by PyYAML (safe loader) into JSON.
fn yaml_documents(file: &std::path::Path) -> Vec<Value> {
    let python = require(ferry_testkit::venv_python()).expect("the tools venv");
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} does not parse: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The Kubernetes manifests and the compose file parse and hold what a
/// deployment needs: the journal on a volume, the credentials in a Secret,
/// probes, the API port, a ServiceMonitor; and the real stores beside Ferry.
#[test]
fn the_kubernetes_manifests_and_the_compose_file_hold_what_a_deployment_needs() {
    if require(ferry_testkit::venv_python()).is_none() {
        return;
    }
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let docs = yaml_documents(&deploy.join("kubernetes/ferry.yaml"));
    let kind = |k: &str| -> &Value {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in the manifests"))
    };
    let secret = kind("Secret");
    assert!(
        secret["stringData"]["FERRY_SOURCE"].is_string()
            && secret["stringData"]["FERRY_TARGET"].is_string()
    );
    let sts = &kind("StatefulSet")["spec"];
    assert_eq!(sts["replicas"], 1, "one agent per migration");
    let c = &sts["template"]["spec"]["containers"][0];
    assert_eq!(c["args"], json!(["start", "--foreground", "--no-monitor"]));
    assert!(c["envFrom"][0]["secretRef"]["name"] == secret["metadata"]["name"]);
    assert!(c["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "FERRY_JOURNAL" && e["value"] == "/var/lib/ferry/journal"));
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], 8629, "{probe}");
    }
    let mount = &c["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/var/lib/ferry");
    assert_eq!(
        sts["volumeClaimTemplates"][0]["metadata"]["name"],
        mount["name"]
    );
    assert_eq!(kind("Service")["spec"]["ports"][0]["port"], 8629);
    let sm = &kind("ServiceMonitor")["spec"]["endpoints"][0];
    assert_eq!(sm["scheme"], "https");
    assert_eq!(sm["path"], "/metrics");

    let compose = &yaml_documents(&deploy.join("compose/compose.yaml"))[0]["services"];
    for s in ["etcd-old", "etcd-new", "mongo", "vault", "kafka", "ferry"] {
        assert!(compose[s]["image"].is_string(), "compose has no {s} image");
    }
    assert!(compose["mongo"]["image"]
        .as_str()
        .unwrap()
        .starts_with("mongo:"));
    assert!(compose["kafka"]["image"]
        .as_str()
        .unwrap()
        .contains("kafka"));
    let deps: Vec<&str> = compose["ferry"]["depends_on"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(deps.len(), 5, "ferry starts after every store: {deps:?}");
    assert_eq!(
        compose["ferry"]["environment"]["FERRY_JOURNAL"],
        "/var/lib/ferry/journal"
    );
    assert!(
        compose["ferry"]["ports"][0]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "the agent's port is published on loopback only"
    );
}
