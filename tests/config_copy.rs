//! `ferry config copy` between a JSON file and a real etcd: the etcd value
//! is byte for byte the document Cells reads at key `config`.

use ferry_testkit::{require, Etcd};
use ferry_tests::harness::*;

const DOC: &str = r#"{
  "version": "4.4.2",
  "defaults": {"url": "https://cells.example.com", "telemetry": false},
  "databases": {"pydio": {"driver": "mysql", "dsn": "pydio:***@tcp(localhost:3306)/cells"}},
  "services": {
    "pydio.grpc.mailer": {"queue": {"@value": "boltdb"}, "sender": {"@value": "smtp", "port": 587}},
    "pydio.web.oauth": {"connectors": [{"id": "pydio", "type": "pydio"}, {"id": "ldap", "type": "ldap", "config": {"host": "ldap:389"}}]}
  },
  "frontend": {"plugin": {"core.pydio": {"APPLICATION_TITLE": "Cells – été ☀"}}}
}
"#;

#[test]
fn file_to_etcd_and_back_is_byte_exact() {
    let Some(etcd) = require(Etcd::start()) else {
        return;
    };
    let f = Ferry::new();
    let dir = f.dir.path();
    let src = dir.join("pydio.json");
    std::fs::write(&src, DOC).unwrap();
    let key_url = etcd.url("config");
    let out = f.run(&["config", "copy", "--from", path_str(&src), "--to", &key_url]);
    ok(&out, "copy file to etcd");
    assert!(
        stdout(&out).contains("bytes identical, JSON equal"),
        "{}",
        stdout(&out)
    );
    // What a Cells reader gets at key `config`: exactly the file's bytes.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = rt.block_on(async {
        let mut c = connect(&etcd.endpoint(), None).await;
        c.get("config", None).await.unwrap().kvs()[0]
            .value()
            .to_vec()
    });
    assert_eq!(got, DOC.as_bytes());
    let back = dir.join("copy/pydio.json");
    std::fs::create_dir_all(back.parent().unwrap()).unwrap();
    ok(
        &f.run(&[
            "config",
            "copy",
            "--from",
            &key_url,
            "--to",
            path_str(&back),
        ]),
        "copy etcd to file",
    );
    assert_eq!(std::fs::read(&back).unwrap(), DOC.as_bytes());
}

#[test]
fn bad_documents_are_refused_with_nothing_written() {
    let Some(etcd) = require(Etcd::start()) else {
        return;
    };
    let f = Ferry::new();
    let dir = f.dir.path();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\n  \"a\": 1,\n  \"b\": [1, 2,\n}\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![path_str(&bad).into(), etcd.url("config")],
            "line 4, column 1",
        ),
        (
            vec![
                path_str(&dir.join("missing.json")).into(),
                etcd.url("config"),
            ],
            "does not exist",
        ),
        (
            vec![etcd.url("config"), etcd.url("config")],
            "the same store",
        ),
        (
            vec![etcd.url("absent"), path_str(&dir.join("out.json")).into()],
            "holds no document",
        ),
    ];
    for (args, needle) in cases {
        let out = f.run(&["config", "copy", "--from", &args[0], "--to", &args[1]]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "{args:?}: `{needle}` not in {}",
            stderr(&out)
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = rt.block_on(async {
        let mut c = connect(&etcd.endpoint(), None).await;
        count(&mut c, "").await
    });
    assert_eq!(n, 0, "a refused copy wrote to etcd");
    assert!(!dir.join("out.json").exists());
}

#[test]
fn follow_publishes_every_whole_state_and_never_a_torn_one() {
    use std::time::{Duration, Instant};
    let Some(etcd) = require(Etcd::start()) else {
        return;
    };
    let f = Ferry::new();
    let src = f.dir.path().join("pydio.json");
    let doc = |i: usize| {
        format!("{{\n  \"version\": \"4.4.{i}\",\n  \"edits\": {i},\n  \"services\": {{\"a\": [1, 2, {i}]}}\n}}\n")
    };
    std::fs::write(&src, doc(0)).unwrap();
    let mut follower = f
        .cmd(&[
            "config",
            "copy",
            "--follow",
            "--from",
            path_str(&src),
            "--to",
            &etcd.url("config"),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Vec<Vec<u8>> = rt.block_on(async {
        let mut c = connect(&etcd.endpoint(), None).await;
        let mut watcher = connect(&etcd.endpoint(), None).await;
        let mut stream = watcher.watch("config", None).await.unwrap();
        // Every value etcd ever holds for the key, in order.
        let collector = tokio::spawn(async move {
            let mut all = Vec::new();
            while let Ok(Some(resp)) =
                tokio::time::timeout(Duration::from_secs(5), stream.message())
                    .await
                    .map(|r| r.ok().flatten())
            {
                for ev in resp.events() {
                    if let Some(kv) = ev.kv() {
                        all.push(kv.value().to_vec());
                    }
                }
            }
            all
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.get("config", None).await.unwrap().kvs().is_empty() {
            assert!(Instant::now() < deadline, "the initial copy never arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in 1..=200usize {
            let body = doc(i);
            if i % 4 == 0 {
                // A torn write: half the document, then the rest.
                std::fs::write(&src, &body[..body.len() / 2]).unwrap();
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
            std::fs::write(&src, &body).unwrap();
            let wrote = Instant::now();
            loop {
                let kvs = c.get("config", None).await.unwrap();
                if kvs
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.value() == body.as_bytes())
                {
                    break;
                }
                assert!(
                    wrote.elapsed() < Duration::from_secs(1),
                    "edit {i} took over a second to reach etcd"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        collector.await.unwrap()
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follower.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = follower.wait().unwrap();
    assert!(status.success(), "follower exited with {status:?}");
    assert!(seen.len() >= 200, "only {} values seen", seen.len());
    for v in &seen {
        assert!(
            serde_json::from_slice::<serde_json::Value>(v).is_ok(),
            "a torn state reached etcd: {}",
            String::from_utf8_lossy(v)
        );
    }
    assert_eq!(seen.last().unwrap(), doc(200).as_bytes());
}

const KEYRING: &str = r#"{"pydio.grpc.user-key": {"keyring.master": "aGVsbG8tdGhpcy1pcy1hLWZha2UtbWFzdGVyLWtleS0zMmI="}}"#;

#[test]
fn keyring_to_vault_kv_and_back_keeps_its_content() {
    use ferry_testkit::OpenBao;
    let Some(bao) = require(OpenBao::start()) else {
        return;
    };
    let f = Ferry::new();
    let dir = f.dir.path();
    let key = dir.join("cells-vault-key");
    std::fs::write(&key, KEYRING).unwrap();
    let vault = format!("vault://root@{}/secret/cells/keyring", bao.endpoint());
    let out = f.run(&["config", "copy", "--from", path_str(&key), "--to", &vault]);
    ok(&out, "keyring to vault");
    assert!(stdout(&out).contains("JSON equal"), "{}", stdout(&out));
    assert!(
        !stdout(&out).contains("root@"),
        "the token was shown: {}",
        stdout(&out)
    );
    // What Cells' Vault keyring store reads: the secret's data is the document.
    let r = ferry_testkit::http::get(
        &bao.endpoint(),
        "/v1/secret/data/cells/keyring",
        &[("X-Vault-Token", "root")],
    )
    .unwrap();
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let want: serde_json::Value = serde_json::from_str(KEYRING).unwrap();
    assert_eq!(body["data"]["data"], want);
    let back = dir.join("back-key");
    ok(
        &f.run(&["config", "copy", "--from", &vault, "--to", path_str(&back)]),
        "vault to file",
    );
    let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&back).unwrap()).unwrap();
    assert_eq!(got, want);
}

#[test]
fn vault_refusals_name_the_problem() {
    use ferry_testkit::OpenBao;
    let Some(bao) = require(OpenBao::start()) else {
        return;
    };
    let ep = bao.endpoint();
    let r = ferry_testkit::http::post(
        &ep,
        "/v1/sys/mounts/kv1",
        &[("X-Vault-Token", "root")],
        r#"{"type":"kv","options":{"version":"1"}}"#,
    )
    .unwrap();
    assert!(
        r.status < 300,
        "enabling a KV v1 mount: {} {}",
        r.status,
        r.body
    );
    let f = Ferry::new();
    let key = f.dir.path().join("cells-vault-key");
    std::fs::write(&key, KEYRING).unwrap();
    let cases = [
        (
            format!("vault://wrong-token-xyz@{ep}/secret/k"),
            3,
            "refused the token",
        ),
        (format!("vault://root@{ep}/kv1/k"), 3, "KV version 1"),
        (format!("vault://root@{ep}/nomount/k"), 3, "no mount"),
        (format!("vault://root@{ep}/secret"), 2, "names no secret"),
    ];
    for (url, code, needle) in cases {
        let out = f.run(&["config", "copy", "--from", path_str(&key), "--to", &url]);
        assert_eq!(out.status.code(), Some(code), "{url}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "{url}: `{needle}` not in {}",
            stderr(&out)
        );
        assert!(
            !stderr(&out).contains("wrong-token-xyz"),
            "token shown: {}",
            stderr(&out)
        );
    }
    let r = ferry_testkit::http::get(&ep, "/v1/secret/metadata/k", &[("X-Vault-Token", "root")])
        .unwrap();
    assert_eq!(r.status, 404, "a refused copy wrote a secret: {}", r.body);
}

#[test]
fn vault_versions_and_metadata_are_copied_version_by_version() {
    use ferry_testkit::http;
    use ferry_testkit::OpenBao;
    let (Some(a), Some(b)) = (require(OpenBao::start()), require(OpenBao::start())) else {
        return;
    };
    let tok = [("X-Vault-Token", "root")];
    let ep = a.endpoint();
    let post = |path: &str, body: String| {
        let r = http::post(&ep, path, &tok, &body).unwrap();
        assert!(r.status < 300, "{path}: {} {}", r.status, r.body);
    };
    // 20 secrets, 1 to 5 versions each, some soft-deleted, some destroyed,
    // custom metadata on some.
    for s in 0..20u64 {
        let path = format!("cells/app/s{s:02}");
        for v in 1..=(1 + s % 5) {
            post(
                &format!("/v1/secret/data/{path}"),
                format!(r#"{{"data":{{"v":"{v}","secret":"value-{s}-{v}"}}}}"#),
            );
        }
        if s % 3 == 0 {
            post(
                &format!("/v1/secret/delete/{path}"),
                r#"{"versions":[1]}"#.into(),
            );
        }
        if s % 4 == 1 {
            post(
                &format!("/v1/secret/destroy/{path}"),
                r#"{"versions":[1]}"#.into(),
            );
        }
        if s % 2 == 0 {
            post(
                &format!("/v1/secret/metadata/{path}"),
                format!(r#"{{"custom_metadata":{{"owner":"team-{s}"}},"max_versions":7}}"#),
            );
        }
    }
    let f = Ferry::new();
    let from = format!("vault://root@{}/secret/cells", a.endpoint());
    let to = format!("vault://root@{}/secret/cells", b.endpoint());
    let out = f.run(&["config", "copy", "--versions", "--from", &from, "--to", &to]);
    ok(&out, "copy --versions");
    assert!(
        stdout(&out).contains("copied 20 secrets (60 versions)"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("0 differences"), "{}", stdout(&out));
    // Spot checks straight from the target's API.
    let get = |path: &str| -> serde_json::Value {
        serde_json::from_str(&http::get(&b.endpoint(), path, &tok).unwrap().body).unwrap()
    };
    let m = get("/v1/secret/metadata/cells/app/s03");
    assert_eq!(m["data"]["current_version"], 4);
    assert_ne!(m["data"]["versions"]["1"]["deletion_time"], "");
    let m = get("/v1/secret/metadata/cells/app/s05");
    assert_eq!(m["data"]["versions"]["1"]["destroyed"], true);
    let m = get("/v1/secret/metadata/cells/app/s04");
    assert_eq!(m["data"]["custom_metadata"]["owner"], "team-4");
    assert_eq!(m["data"]["max_versions"], 7);
    let d = get("/v1/secret/data/cells/app/s04?version=3");
    assert_eq!(d["data"]["data"]["secret"], "value-4-3");
    // A second copy onto the same target is refused: versions would not line up.
    let out = f.run(&["config", "copy", "--versions", "--from", &from, "--to", &to]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("could not line up"),
        "{}",
        stderr(&out)
    );
}
