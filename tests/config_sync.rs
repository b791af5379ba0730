//! Configuration and secrets through `ferry start` and `ferry stop`: JSON
//! files into etcd and Vault, and Vault to Vault with every version, live,
//! against real etcd and OpenBao servers.

use ferry_testkit::{http, require, Etcd, OpenBao};
use ferry_tests::harness::*;
use rand::Rng;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOKEN: [(&str, &str); 1] = [("X-Vault-Token", "root")];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/cells")
        .join(name)
}

fn vault_get(ep: &str, path: &str) -> Value {
    serde_json::from_str(&http::get(ep, path, &TOKEN).unwrap().body).unwrap_or(Value::Null)
}

fn vault_post(ep: &str, path: &str, body: &str) {
    let r = http::post(ep, path, &TOKEN, body).unwrap();
    assert!(r.status < 300, "{path}: {} {}", r.status, r.body);
}

/// `ferry start` with several sources and targets, paired in order.
fn start_routes(
    f: &Ferry,
    sources: &[&str],
    targets: &[&str],
    extra: &[&str],
) -> std::process::Output {
    let listen = format!("127.0.0.1:{}", f.port);
    let mut args = vec!["start", "--no-monitor", "--agent.listen", &listen];
    for s in sources {
        args.extend(["--source", s]);
    }
    for t in targets {
        args.extend(["--target", t]);
    }
    args.extend_from_slice(extra);
    f.run(&args)
}

fn etcd_value(etcd: &Etcd, key: &str) -> Option<Vec<u8>> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = connect(&etcd.endpoint(), None).await;
        c.get(key, None)
            .await
            .unwrap()
            .kvs()
            .first()
            .map(|kv| kv.value().to_vec())
    })
}

#[test]
fn cells_config_vault_and_keyring_sync_live_and_cut_over() {
    let (Some(etcd), Some(bao)) = (require(Etcd::start()), require(OpenBao::start())) else {
        return;
    };
    let f = Ferry::new();
    let dir = f.dir.path();
    for name in ["pydio.json", "pydio-vault.json", "cells-vault-key"] {
        std::fs::copy(fixture(name), dir.join(name)).unwrap();
    }
    let (config, vault_doc, keyring) = (
        dir.join("pydio.json"),
        dir.join("pydio-vault.json"),
        dir.join("cells-vault-key"),
    );
    let keyring_url = format!("vault://root@{}/secret/cells/keyring", bao.endpoint());
    let out = start_routes(
        &f,
        &[path_str(&config), path_str(&vault_doc), path_str(&keyring)],
        &[&etcd.url("config"), &etcd.url("vault"), &keyring_url],
        &["--source.read-only=external"],
    );
    ok(&out, "start");
    f.wait_for("streaming", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    // What a Cells reader gets: the files' bytes at keys `config` and `vault`.
    assert_eq!(
        etcd_value(&etcd, "config").unwrap(),
        std::fs::read(&config).unwrap()
    );
    assert_eq!(
        etcd_value(&etcd, "vault").unwrap(),
        std::fs::read(&vault_doc).unwrap()
    );

    // Live edits reach etcd within a second each.
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    for i in 0..5 {
        doc["services"]["pydio.grpc.mailer"]["workers"] = Value::from(100 + i);
        let bytes = serde_json::to_vec_pretty(&doc).unwrap();
        let tmp = dir.join("pydio.json.tmp");
        std::fs::write(&tmp, &bytes).unwrap();
        std::fs::rename(&tmp, &config).unwrap();
        let t0 = Instant::now();
        while etcd_value(&etcd, "config").as_deref() != Some(bytes.as_slice()) {
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "edit {i} took over 1 s to reach etcd"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // The keyring as Cells' Vault keyring store reads it: the secret's data
    // is the document.
    let kr: Value = serde_json::from_slice(&std::fs::read(&keyring).unwrap()).unwrap();
    let got = vault_get(&bao.endpoint(), "/v1/secret/data/cells/keyring");
    assert_eq!(got["data"]["data"], kr);

    let out = f.run(&["stop", "--timeout", "60s"]);
    ok(&out, "stop");
    f.wait_agent_exit(Duration::from_secs(30));
    let proof: Value =
        serde_json::from_slice(&std::fs::read(f.journal().join("cutover-proof.json")).unwrap())
            .unwrap();
    assert_eq!(proof["differences"], 0);
    assert_eq!(proof["fences"].as_object().unwrap().len(), 3, "{proof}");
    for (s, t) in [
        (path_str(&config).to_string(), etcd.url("config")),
        (path_str(&vault_doc).to_string(), etcd.url("vault")),
        (path_str(&keyring).to_string(), keyring_url.clone()),
    ] {
        let out = f.run(&["verify", "--source", &s, "--target", &t]);
        ok(&out, &format!("verify {s}"));
    }
    // The journal holds the documents sealed: a password in pydio.json
    // appears in no journal file, in clear or base64.
    let needle = b"cn=admin,dc=example,dc=com";
    assert_no_secret_in(&f.journal(), needle);
}

fn assert_no_secret_in(dir: &Path, needle: &[u8]) {
    use base64_like::encode;
    let b64 = encode(needle);
    let mut files = 0;
    for e in walk(dir) {
        let data = std::fs::read(&e).unwrap();
        files += 1;
        assert!(
            !data.windows(needle.len()).any(|w| w == needle),
            "{} holds the secret in clear",
            e.display()
        );
        assert!(
            !data.windows(b64.len()).any(|w| w == b64.as_bytes()),
            "{} holds the secret in base64",
            e.display()
        );
    }
    assert!(files > 3, "expected journal files in {}", dir.display());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Standard base64, enough for the test's needle (no dependency).
mod base64_like {
    pub fn encode(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in data.chunks(3) {
            let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// 1,000 secrets with 1 to 10 versions each, some soft-deleted, some
/// destroyed, some with custom metadata or a max_versions that trimmed
/// them, some requiring check-and-set.
fn seed_secrets(ep: &str, n: u64) -> u64 {
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let ep = ep.to_string();
            std::thread::spawn(move || {
                let mut versions = 0;
                for s in (0..n).filter(|s| s % 8 == t) {
                    let path = format!("app/team-{}/s{s:04}", s % 10);
                    if s % 13 == 0 {
                        vault_post(
                            &ep,
                            &format!("/v1/secret/metadata/{path}"),
                            r#"{"max_versions":3}"#,
                        );
                    }
                    for v in 1..=(1 + s % 10) {
                        vault_post(
                            &ep,
                            &format!("/v1/secret/data/{path}"),
                            &format!(r#"{{"data":{{"v":{v},"password":"pw-{s}-{v}"}}}}"#),
                        );
                        versions += 1;
                    }
                    if s % 7 == 0 {
                        vault_post(
                            &ep,
                            &format!("/v1/secret/delete/{path}"),
                            r#"{"versions":[1]}"#,
                        );
                    }
                    if s % 11 == 1 {
                        vault_post(
                            &ep,
                            &format!("/v1/secret/destroy/{path}"),
                            r#"{"versions":[1,2]}"#,
                        );
                    }
                    if s % 5 == 0 {
                        vault_post(
                            &ep,
                            &format!("/v1/secret/metadata/{path}"),
                            &format!(
                                r#"{{"custom_metadata":{{"owner":"team-{s}","tier":"gold"}}}}"#
                            ),
                        );
                    }
                    if s % 17 == 0 {
                        vault_post(
                            &ep,
                            &format!("/v1/secret/metadata/{path}"),
                            r#"{"cas_required":true}"#,
                        );
                    }
                }
                versions
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

#[test]
fn vault_to_vault_thousand_secrets_every_version_through_sigkills() {
    let (Some(a), Some(b)) = (require(OpenBao::start()), require(OpenBao::start())) else {
        return;
    };
    let versions = seed_secrets(&a.endpoint(), 1000);
    assert_eq!(versions, 5500);
    let f = Ferry::new();
    let (src, dst) = (
        format!("vault://root@{}/secret/app", a.endpoint()),
        format!("vault://root@{}/secret/app", b.endpoint()),
    );
    let args = ["--shards", "4", "--vault.poll-ms", "200"];
    let mut rng = rand::thread_rng();
    let deadline = Instant::now() + Duration::from_secs(400);
    const KILLS: usize = 10;
    for round in 0..KILLS {
        assert!(
            Instant::now() < deadline,
            "crash test exceeded its time bound"
        );
        ok(
            &f.start(&src, &dst, &args),
            &format!("start (round {round})"),
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..2500)));
        f.kill_agent();
    }
    ok(&f.start(&src, &dst, &args), "final start");
    f.wait_for("caught up", Duration::from_secs(300), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    // Sealed at rest: no password, in clear or base64, in any journal file.
    assert_no_secret_in(&f.journal(), b"pw-123-4");

    // Live changes: a new version, a soft delete, a new secret, a removal.
    let ep = a.endpoint();
    vault_post(
        &ep,
        "/v1/secret/data/app/team-2/s0002",
        r#"{"data":{"v":"live"}}"#,
    );
    vault_post(
        &ep,
        "/v1/secret/delete/app/team-3/s0003",
        r#"{"versions":[2]}"#,
    );
    vault_post(
        &ep,
        "/v1/secret/data/app/new/one",
        r#"{"data":{"fresh":true}}"#,
    );
    let r = http::request(
        &ep,
        "DELETE",
        "/v1/secret/metadata/app/team-4/s0004",
        &TOKEN,
        None,
    )
    .unwrap();
    assert!(r.status < 300, "{}", r.body);
    let t0 = Instant::now();
    loop {
        let m = vault_get(&b.endpoint(), "/v1/secret/metadata/app/team-2/s0002");
        let gone = vault_get(&b.endpoint(), "/v1/secret/metadata/app/team-4/s0004");
        if m["data"]["current_version"] == 4 && gone["data"].is_null() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "live changes did not arrive: {m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(&f.run(&["stop", "--timeout", "120s"]), "stop");
    f.wait_agent_exit(Duration::from_secs(30));
    let out = f.run(&["verify", "--source", &src, "--target", &dst]);
    ok(&out, "verify");
    assert!(stdout(&out).contains("0 differences"), "{}", stdout(&out));
    // No version duplicated by the kills: version numbers line up exactly.
    for s in [0u64, 1, 7, 13, 17, 999] {
        let path = format!("/v1/secret/metadata/app/team-{}/s{s:04}", s % 10);
        let (ma, mb) = (
            vault_get(&a.endpoint(), &path),
            vault_get(&b.endpoint(), &path),
        );
        assert_eq!(
            ma["data"]["current_version"], mb["data"]["current_version"],
            "{path}"
        );
        assert_eq!(
            ma["data"]["custom_metadata"]["owner"],
            mb["data"]["custom_metadata"]["owner"]
        );
    }
    let d = vault_get(&b.endpoint(), "/v1/secret/data/app/team-9/s0999?version=10");
    assert_eq!(d["data"]["data"]["password"], "pw-999-10");
}

#[test]
fn with_keys_layout_and_the_vault_key_parameter() {
    let (Some(etcd), Some(bao)) = (require(Etcd::start()), require(OpenBao::start())) else {
        return;
    };
    let f = Ferry::new();
    let dir = f.dir.path();
    let (config, keyring) = (dir.join("pydio.json"), dir.join("cells-vault-key"));
    std::fs::copy(fixture("pydio.json"), &config).unwrap();
    std::fs::copy(fixture("cells-vault-key"), &keyring).unwrap();
    let cfg_url = format!("{}?withKeys=true", etcd.url("cfg"));
    // Cells' own form of a Vault keyring URL: the secret in `?key=`.
    let kr_url = format!("vault://root@{}/secret?key=cells/keyring2", bao.endpoint());
    ok(
        &start_routes(
            &f,
            &[path_str(&config), path_str(&keyring)],
            &[&cfg_url, &kr_url],
            &["--source.read-only=external"],
        ),
        "start",
    );
    f.wait_for("streaming", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    let doc: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let leaf = etcd_value(&etcd, "cfg/services/pydio.grpc.mailer/workers").unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&leaf).unwrap(),
        doc["services"]["pydio.grpc.mailer"]["workers"]
    );
    assert!(etcd_value(&etcd, "cfg/ports/pydio.grpc.jobs").is_some());
    // A leaf changes and a subtree goes: only those keys move.
    let mut edited = doc.clone();
    edited["services"]["pydio.grpc.mailer"]["workers"] = Value::from(77);
    edited.as_object_mut().unwrap().remove("ports");
    std::fs::write(&config, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    let t0 = Instant::now();
    while etcd_value(&etcd, "cfg/ports/pydio.grpc.jobs").is_some()
        || etcd_value(&etcd, "cfg/services/pydio.grpc.mailer/workers").as_deref() != Some(b"77")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the edit took over 1 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let got = vault_get(&bao.endpoint(), "/v1/secret/data/cells/keyring2");
    let kr: Value = serde_json::from_slice(&std::fs::read(&keyring).unwrap()).unwrap();
    assert_eq!(got["data"]["data"], kr);
    ok(&f.run(&["stop", "--timeout", "60s"]), "stop");
    f.wait_agent_exit(Duration::from_secs(30));
    let out = f.run(&[
        "verify",
        "--source",
        path_str(&config),
        "--target",
        &cfg_url,
    ]);
    ok(&out, "verify withKeys");
    assert!(stdout(&out).contains("0 differences"), "{}", stdout(&out));
    ok(
        &f.run(&[
            "verify",
            "--source",
            path_str(&keyring),
            "--target",
            &kr_url,
        ]),
        "verify keyring",
    );
}

/// `ferry start` with a configuration source refuses bad input in one
/// sentence, with the documented exit code, and writes nothing: no
/// journal, no target key, no secret.
#[test]
fn bad_configuration_input_is_refused_before_anything_is_written() {
    let (Some(etcd), Some(bao)) = (require(Etcd::start()), require(OpenBao::start())) else {
        return;
    };
    let f = Ferry::new();
    let dir = f.dir.path();
    let torn = dir.join("torn.json");
    std::fs::write(&torn, "{\n  \"a\": {\"b\": 1,\n  \"c\": [1, 2\n}\n").unwrap();
    let big = dir.join("big.json");
    std::fs::write(&big, format!(r#"{{"blob":"{}"}}"#, "x".repeat(2 << 20))).unwrap();
    let good = dir.join("pydio.json");
    std::fs::copy(fixture("pydio.json"), &good).unwrap();
    let array = dir.join("array.json");
    std::fs::write(&array, "[1,2,3]").unwrap();
    let ep = bao.endpoint();
    let cases: Vec<(String, String, i32, &str)> = vec![
        (
            path_str(&torn).into(),
            etcd.url("config"),
            2,
            "line 4, column 1",
        ),
        (
            path_str(&dir.join("missing.json")).into(),
            etcd.url("config"),
            2,
            "does not exist",
        ),
        (path_str(&big).into(), etcd.url("config"), 3, "more than"),
        (
            path_str(&good).into(),
            format!("vault://root@{ep}/secret/a/../b"),
            2,
            "`..`",
        ),
        (
            path_str(&good).into(),
            format!("vault://wrong-token@{ep}/secret/k"),
            3,
            "refused the token",
        ),
        (
            path_str(&array).into(),
            format!("vault://root@{ep}/secret/k"),
            2,
            "JSON object",
        ),
        (
            path_str(&good).into(),
            path_str(&good).into(),
            2,
            "both a source and a target",
        ),
        (
            format!("vault://root@{ep}/secret/app"),
            etcd.url("config"),
            2,
            "cannot feed",
        ),
    ];
    for (src, tgt, code, needle) in cases {
        let out = f.start(&src, &tgt, &["--source.read-only=external"]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{src} -> {tgt}: {}",
            stderr(&out)
        );
        let err = stderr(&out);
        assert!(err.contains(needle), "{src} -> {tgt}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
        assert!(!f.journal().exists(), "{src} -> {tgt} created the journal");
    }
    assert!(
        etcd_value(&etcd, "config").is_none(),
        "a refused start wrote etcd"
    );
    let m = vault_get(&ep, "/v1/secret/metadata/?list=true");
    assert!(m["data"].is_null(), "a refused start wrote Vault: {m}");
}

/// A Vault mount is verified continuously as one whole range: a secret
/// written on the target behind Ferry's back is reported within seconds
/// and the cutover refuses to open; once it is removed the mount verifies
/// again, and the cutover, with a quiet source, compares nothing of it
/// inside its window.
#[test]
fn a_secret_written_on_the_vault_target_is_reported_and_blocks_the_cutover_until_removed() {
    let (Some(a), Some(b)) = (require(OpenBao::start()), require(OpenBao::start())) else {
        return;
    };
    seed_secrets(&a.endpoint(), 40);
    let f = Ferry::new();
    let (src, dst) = (
        format!("vault://root@{}/secret/app", a.endpoint()),
        format!("vault://root@{}/secret/app", b.endpoint()),
    );
    ok(
        &f.start(
            &src,
            &dst,
            &["--source.read-only=external", "--vault.poll-ms", "200"],
        ),
        "start",
    );
    let verified_all =
        |st: &Value| st["verification"][0]["ranges"] == 1 && st["verification"][0]["verified"] == 1;
    f.wait_for("the mount verified", Duration::from_secs(60), |st| {
        all_streaming(st) && max_lag(st) == 0 && verified_all(st)
    });
    vault_post(
        &b.endpoint(),
        "/v1/secret/data/app/stray",
        r#"{"data":{"planted":"behind ferry's back"}}"#,
    );
    let st = f.wait_for_difference(Instant::now());
    let first = st["verification"][0]["differences"][0].to_string();
    assert!(first.contains("stray"), "{st}");
    let out = f.run(&["stop", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("stray"), "{}", stderr(&out));
    // Removed, versions and metadata.
    let r = http::request(
        &b.endpoint(),
        "DELETE",
        "/v1/secret/metadata/app/stray",
        &TOKEN,
        None,
    )
    .unwrap();
    assert!(r.status < 300, "{} {}", r.status, r.body);
    f.cut_over_after_repair(&src, &dst);
}
