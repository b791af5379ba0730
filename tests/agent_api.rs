//! The agent's API and the CLI's refusals, on real etcd servers: metrics,
//! tokens, client certificates, bad input, and secrets kept out of sight.

use ferry_testkit::{require, Etcd};
use ferry_tests::harness::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An HTTPS client that trusts the agent's CA, optionally with a client certificate.
fn client(ca: &Path, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let tls = match identity {
        None => b.with_no_client_auth(),
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_move_and_the_token_is_required() {
    let (Some(src), Some(tgt)) = (require(Etcd::start()), require(Etcd::start())) else {
        return;
    };
    let rt = rt();
    let f = Ferry::new();
    let mut c = rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "m", 2_000).await;
        c
    });
    ok(
        &f.start(
            &src.url("m"),
            &tgt.url("m"),
            &["--source.read-only=external"],
        ),
        "start",
    );
    f.wait_for("caught up", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    let http = client(&f.journal().join("agent-ca.pem"), None);
    let base = format!("https://127.0.0.1:{}", f.port);
    let scrape = || {
        rt.block_on(async {
            http.get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    let before = scrape();
    assert!(before.contains("ferry_replay_lag_events"), "{before}");
    let applied_before = metric(&before, "ferry_replay_applied_events_total");
    assert!(applied_before >= 2000.0, "{applied_before}");
    rt.block_on(async {
        for i in 0..300 {
            c.put(format!("m/more-{i}"), "x", None).await.unwrap();
        }
    });
    f.wait_for("caught up again", Duration::from_secs(30), |s| {
        max_lag(s) == 0
    });
    std::thread::sleep(Duration::from_millis(1500));
    let after = scrape();
    assert!(
        metric(&after, "ferry_replay_applied_events_total") >= applied_before + 300.0,
        "{after}"
    );
    assert!(metric(&after, "ferry_journal_appended_events_total") > 0.0);

    // Control endpoints without the token, or with a wrong one, are refused.
    rt.block_on(async {
        let r = http
            .post(format!("{base}/v1/stop"))
            .json(&serde_json::json!({"abort": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .get(format!("{base}/v1/status"))
            .bearer_auth("0".repeat(64))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    });
    let out = f.run(&["status", "--agent.token", "wrong"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused the token"),
        "{}",
        stderr(&out)
    );
    assert!(
        f.status().is_some(),
        "the agent must still run after refused requests"
    );
    // A CLI trusting another CA refuses this agent.
    let other = Ferry::new();
    std::fs::create_dir_all(other.journal()).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(
        other.journal().join("agent-ca.pem"),
        params.self_signed(&key).unwrap().pem(),
    )
    .unwrap();
    let out = other.run(&["status", "--agent", &base]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not vouch for"),
        "{}",
        stderr(&out)
    );
    ok(&f.run(&["stop", "--abort"]), "stop --abort");
    f.wait_agent_exit(Duration::from_secs(30));
    // No agent running: one sentence, exit 1.
    for cmd in [&["status"][..], &["stop"][..]] {
        let out = f.run(cmd);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("no agent is running"),
            "{}",
            stderr(&out)
        );
        assert_eq!(stderr(&out).lines().count(), 1);
    }
}

#[test]
fn client_certificates_are_required_with_client_ca() {
    let (Some(src), Some(tgt)) = (require(Etcd::start()), require(Etcd::start())) else {
        return;
    };
    let f = Ferry::new();
    // A client CA and a client certificate it signed.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ops CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let cl_key = rcgen::KeyPair::generate().unwrap();
    let mut cl_params = rcgen::CertificateParams::new(vec!["operator".to_string()]).unwrap();
    cl_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cl_cert = cl_params.signed_by(&cl_key, &issuer).unwrap();
    let ca_path = f.dir.path().join("client-ca.pem");
    let (cert_path, key_path) = (f.dir.path().join("op.pem"), f.dir.path().join("op-key.pem"));
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    std::fs::write(&cert_path, cl_cert.pem()).unwrap();
    std::fs::write(&key_path, cl_key.serialize_pem()).unwrap();

    let ca_arg = format!("--agent.client-ca={}", ca_path.display());
    ok(
        &f.start(
            &src.url("tls"),
            &tgt.url("tls"),
            &[
                "--source.read-only=external",
                "--allow-empty-source",
                &ca_arg,
            ],
        ),
        "start with client CA",
    );
    let out = f.run(&["status"]);
    assert!(
        !out.status.success(),
        "status without a client certificate succeeded"
    );
    assert!(
        stderr(&out).contains("client certificate"),
        "{}",
        stderr(&out)
    );
    let rt = rt();
    let base = format!("https://127.0.0.1:{}", f.port);
    let bare = client(&f.journal().join("agent-ca.pem"), None);
    assert!(
        rt.block_on(async { bare.get(format!("{base}/metrics")).send().await })
            .is_err(),
        "TLS without a client certificate was accepted"
    );
    let with = [
        "--agent.client-cert",
        path_str(&cert_path),
        "--agent.client-key",
        path_str(&key_path),
    ];
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(&with);
    ok(&f.run(&args), "status with a client certificate");
    let mut args = vec!["stop", "--abort"];
    args.extend_from_slice(&with);
    ok(&f.run(&args), "stop --abort with a client certificate");
    f.wait_agent_exit(Duration::from_secs(30));
}

#[test]
fn bad_input_is_refused_in_one_sentence_with_nothing_written() {
    let (Some(src), Some(tgt)) = (
        require(Etcd::start_with_args(&["--max-request-bytes=4194304"])),
        require(Etcd::start()),
    ) else {
        return;
    };
    let rt = rt();
    let dead = ferry_testkit::free_port().unwrap();
    rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "app", 100).await;
        let mut t = connect(&tgt.endpoint(), None).await;
        t.put("busy/x", "1", None).await.unwrap();
        c.put("big/huge", vec![b'x'; 2 << 20], None).await.unwrap();
        c.put("big/small", "ok", None).await.unwrap();
    });
    let f = Ferry::new();
    let ext = vec!["--source.read-only=external"];
    let cases: Vec<(String, String, Vec<&str>, i32, &str)> = vec![
        (
            format!("etcd://127.0.0.1:{dead}/app"),
            tgt.url("copy"),
            ext.clone(),
            3,
            "unreachable",
        ),
        (
            src.url("app"),
            format!("etcd://127.0.0.1:{dead}/copy"),
            ext.clone(),
            3,
            "unreachable",
        ),
        (
            format!("etcd://127.0.0.1:{}/", src.client_port()),
            tgt.url("copy"),
            ext.clone(),
            2,
            "names no key prefix",
        ),
        (
            src.url("app"),
            tgt.url("busy"),
            ext.clone(),
            3,
            "pass --force",
        ),
        (
            src.url("app"),
            format!("etcd://{}/app/copy", src.endpoint()),
            ext.clone(),
            2,
            "overlap",
        ),
        (src.url("big"), tgt.url("big"), ext.clone(), 3, "more than"),
        (
            src.url("app"),
            tgt.url("copy"),
            vec![],
            3,
            "authentication disabled",
        ),
    ];
    for (s, t, extra, code, needle) in cases {
        let mut args = vec!["--check-only"];
        args.extend(extra);
        let out = f.start(&s, &t, &args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{s} → {t}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "{s} → {t}: `{needle}` not in {}",
            stderr(&out)
        );
        assert!(!f.journal().exists(), "a refused start wrote the journal");
    }
    // Wrong credentials on an auth-enabled source; the password never shows.
    rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        enable_auth(&mut c, "app").await;
    });
    let out = f.start(
        &format!("etcd://root:wrongpw-secret@{}/app", src.endpoint()),
        &tgt.url("copy"),
        &["--check-only"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused the user name or password"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("wrongpw-secret") && !stdout(&out).contains("wrongpw-secret"));
    // The right ones pass the checks, with auth as the read-only means.
    let out = f.start(
        &format!("etcd://root:rootpw@{}/app", src.endpoint()),
        &tgt.url("copy"),
        &["--check-only"],
    );
    ok(&out, "check-only with auth");
    assert!(
        stdout(&out).contains("pre-checks passed"),
        "{}",
        stdout(&out)
    );
    assert!(!f.journal().exists());
}

#[test]
fn secrets_never_reach_logs_status_or_metrics() {
    let (Some(src), Some(tgt)) = (require(Etcd::start()), require(Etcd::start())) else {
        return;
    };
    let rt = rt();
    rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "app", 500).await;
        enable_auth(&mut c, "app").await;
    });
    let f = Ferry::new();
    let source = format!("etcd://root:rootpw@{}/app", src.endpoint());
    let mut seen = String::new();
    let out = f.start(&source, &tgt.url("copy"), &[]);
    ok(&out, "start");
    seen += &(stdout(&out) + &stderr(&out));
    f.wait_for("caught up", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    for cmd in [&["status"][..], &["status", "--json"][..]] {
        let o = f.run(cmd);
        seen += &(stdout(&o) + &stderr(&o));
    }
    let http = client(&f.journal().join("agent-ca.pem"), None);
    seen += &rt.block_on(async {
        http.get(format!("https://127.0.0.1:{}/metrics", f.port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let o = f.run(&["stop", "--timeout", "60s"]);
    seen += &(stdout(&o) + &stderr(&o));
    f.wait_agent_exit(Duration::from_secs(30));
    for entry in std::fs::read_dir(f.journal()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            seen += &String::from_utf8_lossy(&std::fs::read(&p).unwrap());
        }
    }
    assert!(
        seen.contains("root:***@"),
        "the redacted URL should appear somewhere: {seen:.2000}"
    );
    assert!(!seen.contains("rootpw"), "the password leaked");
}

/// Kills the child on drop: a Prometheus the test started.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The series of an instant query's result, through Prometheus's HTTP API.
fn query(addr: &str, q: &str) -> Vec<serde_json::Value> {
    let path = format!(
        "/api/v1/query?query={}",
        q.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    match ferry_testkit::http::get(addr, &path, &[]) {
        Ok(r) if r.status == 200 => serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Debian's Prometheus scrapes a running agent over HTTPS (trusting the CA
/// in its journal, as `deploy/prometheus/prometheus.yml` says) and answers
/// queries on its lag and applied counters, and loads the shipped rules.
#[test]
fn prometheus_scrapes_the_agent_and_answers_on_lag_and_applied_events() {
    let Some(prometheus) = require(ferry_testkit::prometheus()) else {
        return;
    };
    let (Some(src), Some(tgt)) = (require(Etcd::start()), require(Etcd::start())) else {
        return;
    };
    let rt = rt();
    rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "prom", 2_000).await;
    });
    let f = Ferry::new();
    ok(
        &f.start(
            &src.url("prom"),
            &tgt.url("prom"),
            &["--source.read-only=external"],
        ),
        "start",
    );
    f.wait_for("caught up", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    let dir = tempfile::tempdir().unwrap();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/ferry-alerts.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: ferry\n    scheme: https\n    tls_config:\n      ca_file: {}\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
        rules.display(),
        f.journal().join("agent-ca.pem").display(),
        f.port
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = ferry_testkit::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let _prom = Child(
        std::process::Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (applied, lag, up) = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus never had the agent's series"
        );
        let applied = query(&addr, "sum(ferry_replay_applied_events_total)");
        let lag = query(&addr, "max(ferry_replay_lag_events)");
        let up = query(&addr, "up{job=\"ferry\"}");
        if !applied.is_empty() && !lag.is_empty() && !up.is_empty() {
            break (applied, lag, up);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let value =
        |r: &[serde_json::Value]| -> f64 { r[0]["value"][1].as_str().unwrap().parse().unwrap() };
    assert_eq!(value(&up), 1.0, "the scrape over HTTPS works: {up:?}");
    assert!(value(&applied) >= 2_000.0, "applied events: {applied:?}");
    assert_eq!(value(&lag), 0.0, "lag: {lag:?}");
    // The rules loaded and are evaluated.
    let r = ferry_testkit::http::get(&addr, "/api/v1/rules", &[]).unwrap();
    assert!(
        r.body.contains("FerryReplicationStalled") && r.body.contains("\"health\":\"ok\""),
        "{}",
        r.body
    );
    ok(&f.run(&["stop", "--abort"]), "stop --abort");
    f.wait_agent_exit(Duration::from_secs(30));
}

/// A source prefix that holds nothing stops the pre-check, and the sentence
/// says where the keys are: keys under `/app/…` need `etcd://h//app`, as the
/// URL path is the prefix without its leading slash.
#[test]
fn an_empty_source_is_refused_and_the_sentence_names_where_the_keys_are() {
    let (Some(src), Some(tgt)) = (require(Etcd::start()), require(Etcd::start())) else {
        return;
    };
    let rt = rt();
    rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        for i in 0..7 {
            c.put(format!("/app/key-{i}"), "v", None).await.unwrap();
        }
    });
    let f = Ferry::new();
    let out = f.start(
        &src.url("app"),
        &tgt.url("app"),
        &["--source.read-only=external"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let said = stderr(&out);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.contains("holds no key under the prefix `app`")
            && said.contains("`/app` holds 7 keys")
            && said.contains(&format!("etcd://{}//app", src.endpoint())),
        "{said}"
    );
    assert!(
        !f.journal().join("agent.log").exists(),
        "nothing was started"
    );
    // With the leading slash the keys are found and copied.
    ok(
        &f.start(
            &format!("etcd://{}//app", src.endpoint()),
            &tgt.url("app"),
            &["--source.read-only=external"],
        ),
        "start with the right prefix",
    );
    f.wait_for("copied", Duration::from_secs(60), |s| {
        all_streaming(s) && max_lag(s) == 0
    });
    ok(&f.run(&["stop", "--abort"]), "stop --abort");
    f.wait_agent_exit(Duration::from_secs(30));
    // An empty source on purpose starts with the flag.
    let g = Ferry::new();
    ok(
        &g.start(
            &src.url("nothing"),
            &tgt.url("nothing"),
            &["--source.read-only=external", "--allow-empty-source"],
        ),
        "start an empty source on purpose",
    );
    ok(&g.run(&["stop", "--abort"]), "stop --abort");
    g.wait_agent_exit(Duration::from_secs(30));
}

/// The status page in a real Chromium: see `tests/browser/status_page.cjs`.
#[test]
fn the_status_page_logs_in_shows_the_shards_and_cuts_over_in_chromium() {
    let (Some(src), Some(tgt), Some(chromium), Some((node, playwright))) = (
        require(Etcd::start()),
        require(Etcd::start()),
        require(ferry_testkit::chromium()),
        require(ferry_testkit::playwright()),
    ) else {
        return;
    };
    let rt = rt();
    rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "p", 4_000).await;
    });
    let f = Ferry::new();
    let source = src.url("p");
    // Rate-limited, so the browser sees the copy in progress.
    ok(
        &f.start(
            &source,
            &tgt.url("p"),
            &[
                "--source.read-only=external",
                "--rate-limit",
                "400",
                "--shards",
                "2",
            ],
        ),
        "start",
    );
    f.wait_for("the agent answers", Duration::from_secs(60), |s| {
        s["lag"]["shards"].as_array().is_some_and(|a| !a.is_empty())
    });
    let base = format!("https://127.0.0.1:{}", f.port);
    let token = std::fs::read_to_string(f.journal().join("agent.token")).unwrap();
    let token = token.trim();
    // Outside the browser: the page holds no data, carries its policy,
    // and a token in a URL opens nothing.
    let http = client(&f.journal().join("agent-ca.pem"), None);
    rt.block_on(async {
        let r = http.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert_eq!(r.headers()["cache-control"], "no-store");
        let body = r.text().await.unwrap();
        assert!(!body.contains(&source), "the page shell holds no data");
        let r = http
            .get(format!("{base}/v1/status?token={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "a token in the URL is not accepted");
    });
    let out = std::process::Command::new(node)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/status_page.cjs"))
        .env("PLAYWRIGHT_CORE", &playwright)
        .env("CHROMIUM", &chromium)
        .env("AGENT", &base)
        .env("TOKEN", token)
        .env("SOURCE", &source)
        .env(
            "SCREENSHOT",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png"),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(seen["ok"], true, "{seen}");
    f.wait_agent_exit(Duration::from_secs(30));
    let proof: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.journal().join("cutover-proof.json")).unwrap())
            .unwrap();
    assert_eq!(
        proof["differences"], 0,
        "the page's cutover verified: {proof}"
    );
}

/// Runs `ferry args…` on a pseudo-terminal `columns` wide (util-linux
/// `script`) for about `secs` seconds; what it drew, escape codes removed.
fn on_a_terminal(f: &Ferry, args: &[&str], columns: u16, secs: u64) -> String {
    let mut line = ferry_tests::ferry_bin().display().to_string();
    for a in args {
        line.push(' ');
        line.push_str(&format!("'{a}'"));
    }
    let mut c = std::process::Command::new("script");
    c.args([
        "-qfec",
        &format!("stty cols {columns} rows 40; exec {line}"),
        "/dev/null",
    ])
    .env("FERRY_JOURNAL", f.journal())
    .env("TERM", "xterm")
    .env_remove("COLUMNS")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    let mut child = c.spawn().expect("script (util-linux) runs");
    std::thread::sleep(Duration::from_secs(secs));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let raw = String::from_utf8_lossy(&out.stdout).to_string();
    // CSI sequences (colours, cursor moves, clears) out; lines split on
    // the carriage returns and newlines a redraw uses.
    let mut text = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        text.push(if ch == '\r' { '\n' } else { ch });
    }
    text
}

#[test]
fn progress_is_drawn_on_a_terminal_fits_a_narrow_one_and_stays_plain_when_piped() {
    let (Some(src), Some(tgt)) = (require(Etcd::start()), require(Etcd::start())) else {
        return;
    };
    let rt = rt();
    rt.block_on(async {
        let mut c = connect(&src.endpoint(), None).await;
        load(&mut c, "w", 2_000).await;
    });
    let f = Ferry::new();
    let (s, t) = (src.url("w"), tgt.url("w"));
    ok(&f.start(&s, &t, &["--source.read-only=external"]), "start");
    f.wait_for("caught up", Duration::from_secs(60), |st| {
        all_streaming(st) && max_lag(st) == 0
    });
    // `start` again monitors the running agent: bars on a wide terminal.
    let wide = on_a_terminal(
        &f,
        &[
            "start",
            "--source",
            &s,
            "--target",
            &t,
            "--source.read-only=external",
        ],
        120,
        4,
    );
    assert!(
        wide.contains(&format!("{t} [")) && wide.contains("applied, lag 0 events"),
        "a bar per target: {wide}"
    );
    // `status --watch` on 40 columns: every line of the redraw fits.
    let narrow = on_a_terminal(&f, &["status", "--watch"], 40, 3);
    assert!(narrow.contains("shard"), "{narrow}");
    for l in narrow.lines() {
        assert!(
            l.chars().count() <= 40,
            "a line wider than the terminal: {l:?}"
        );
    }
    // The monitor on 40 columns drops the bar itself and fits its lines.
    let small = on_a_terminal(
        &f,
        &[
            "start",
            "--source",
            &s,
            "--target",
            &t,
            "--source.read-only=external",
        ],
        40,
        4,
    );
    assert!(small.contains("applied"), "{small}");
    assert!(
        !small.contains(" ["),
        "no bar on a narrow terminal: {small}"
    );
    // Piped: plain text, no escape codes.
    let out = f.run(&["status"]);
    ok(&out, "status");
    assert!(!String::from_utf8_lossy(&out.stdout).contains('\x1b'));
    ok(&f.run(&["stop", "--abort"]), "stop --abort");
    f.wait_agent_exit(Duration::from_secs(30));
}
