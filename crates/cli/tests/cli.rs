//! The `ferry` binary against bad input and damaged journals: every refusal
//! is one line on stderr naming the problem and the fix, with the documented
//! exit code, and changes nothing on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn ferry(args: &[&str]) -> Output {
    Command::new(FERRY).args(args).output().expect("run ferry")
}

/// Asserts a refusal: exit `code`, exactly one stderr line containing every
/// one of `needles`, nothing on stdout.
fn refused(out: &Output, code: i32, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stderr: {stderr} stdout: {stdout}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line, got: {stderr}");
    assert!(lines[0].starts_with("ferry: "), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` missing from: {stderr}");
    }
    stderr
}

/// Every file below `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), (m.len(), m.modified().unwrap()));
            }
        }
    }
    out
}

fn demo_journal(dir: &Path, events: &str) {
    let out = ferry(&[
        "journal",
        "demo",
        "--journal",
        dir.to_str().unwrap(),
        "--events",
        events,
        "--fsync",
        "never",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_urls_are_refused_without_touching_the_journal() {
    let t = tempfile::tempdir().unwrap();
    let j = t.path().join("journal");
    let js = j.to_str().unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "redis://admin:hunter2@127.0.0.1/x",
            &["unknown store scheme `redis`", "use one of"],
        ),
        (
            "etcd:///app",
            &["names no host", "etcd://127.0.0.1:2379/prefix"],
        ),
        (
            "etcd://127.0.0.1:99999/app",
            &["bad port `99999`", "1 to 65535"],
        ),
        ("etcd://root:hunter2@127.0.0.1:0/app", &["bad port `0`"]),
        (
            "vault://127.0.0.1:8200",
            &["names no KV mount", "vault://host:8200/<mount>/<path>"],
        ),
        ("kafka://127.0.0.1:9092", &["names no topic"]),
    ];
    for (url, needles) in cases {
        let out = ferry(&[
            "start",
            "--check-only",
            "--journal",
            js,
            "--source",
            url,
            "--target",
            "etcd://127.0.0.1:2379/copy",
        ]);
        let msg = refused(&out, 2, needles);
        assert!(!msg.contains("hunter2"), "secret leaked: {msg}");
        assert!(!j.exists(), "a refused start created the journal");
    }
    // A Bolt file cannot be a target; a store cannot be its own target.
    let out = ferry(&[
        "start",
        "--check-only",
        "--journal",
        js,
        "--source",
        "etcd://h/a",
        "--target",
        "bolt:///tmp/x.db",
    ]);
    refused(&out, 2, &["cannot be a target"]);
    let out = ferry(&[
        "start",
        "--check-only",
        "--journal",
        js,
        "--source",
        "etcd://h/a",
        "--target",
        "etcd://h:2379/a",
    ]);
    refused(&out, 2, &["both a source and a target"]);
    assert!(!j.exists());
}

#[test]
fn unwritable_journal_directory_is_refused() {
    let t = tempfile::tempdir().unwrap();
    // A path below a regular file can never be created, whoever runs this.
    let file = t.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let below = file.join("journal");
    let out = ferry(&[
        "journal",
        "demo",
        "--journal",
        below.to_str().unwrap(),
        "--events",
        "10",
    ]);
    refused(&out, 2, &["is not writable", "choose another --journal"]);

    // A directory this user may not write: root ignores modes, so run ferry
    // as `nobody` then.
    let ro = t.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    let j = ro.join("journal");
    let mut cmd;
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", FERRY]);
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
        cmd = Command::new(FERRY);
    }
    let out = cmd
        .args([
            "start",
            "--check-only",
            "--journal",
            j.to_str().unwrap(),
            "--source",
            "etcd://h/a",
            "--target",
            "etcd://h/b",
        ])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    refused(&out, 2, &["is not writable", "permission denied"]);
    assert!(!j.exists());
}

#[test]
fn newer_format_is_refused_untouched() {
    let t = tempfile::tempdir().unwrap();
    let j = t.path().join("journal");
    demo_journal(&j, "2000");
    std::fs::write(j.join("FORMAT"), "ferry-journal-format 99\n").unwrap();
    let before = snapshot(&j);
    for args in [
        vec!["journal", "verify", j.to_str().unwrap()],
        vec!["journal", "repair", j.to_str().unwrap()],
        vec!["journal", "inspect", j.to_str().unwrap()],
        vec![
            "start",
            "--check-only",
            "--journal",
            j.to_str().unwrap(),
            "--source",
            "etcd://h/a",
            "--target",
            "etcd://h/b",
        ],
    ] {
        let out = ferry(&args);
        refused(&out, 2, &["format version 99", "use a newer ferry"]);
    }
    assert_eq!(
        snapshot(&j),
        before,
        "a refused command changed the journal"
    );
}

#[test]
fn journal_in_use_by_another_ferry_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let j = t.path().join("journal");
    let js = j.to_str().unwrap();
    // A real ferry process that holds the journal for a while.
    let mut holder = Command::new(FERRY)
        .args([
            "journal",
            "demo",
            "--journal",
            js,
            "--events",
            "100000000",
            "--batch",
            "1",
            "--fsync",
            "never",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !j.join("CURRENT").exists() {
        assert!(
            Instant::now() < deadline,
            "the holder never opened its journal"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = ferry(&["journal", "repair", js]);
    refused(&out, 3, &["in use by another ferry process"]);
    let out = ferry(&[
        "start",
        "--check-only",
        "--journal",
        js,
        "--source",
        "etcd://h/a",
        "--target",
        "etcd://h/b",
    ]);
    refused(&out, 3, &["in use by another ferry process"]);
    // Verify and inspect read without the lock.
    assert!(ferry(&["journal", "inspect", js]).status.success());
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(ferry(&["journal", "verify", js]).status.success());
}

/// Flips one bit in the payload of record `seq`, underneath the journal.
/// The layout (documented in crates/journal-rocks/src/columns.rs): key
/// shard ‖ first seq of a chunk; value: records, each `len u32 ‖ frame`.
fn flip_record(dir: &Path, shard: u32, seq: u64) {
    let cfs = ["events", "shards", "source_checkpoints", "applied", "meta"];
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, cfs).unwrap();
    let cf = db.cf_handle("events").unwrap();
    let key = |s: u64| [shard.to_be_bytes().as_slice(), s.to_be_bytes().as_slice()].concat();
    let mut it = db.raw_iterator_cf(cf);
    it.seek_for_prev(key(seq));
    let k = it.key().expect("a chunk holds the record").to_vec();
    let start = u64::from_be_bytes(k[4..12].try_into().unwrap());
    let mut v = it.value().unwrap().to_vec();
    drop(it);
    let mut at = 0usize;
    for _ in start..seq {
        at += 4 + u32::from_be_bytes(v[at..at + 4].try_into().unwrap()) as usize;
    }
    let len = u32::from_be_bytes(v[at..at + 4].try_into().unwrap()) as usize;
    v[at + 4 + len / 2] ^= 0x10;
    db.put_cf(cf, &k, &v).unwrap();
}

#[test]
fn damaged_record_is_reported_and_repaired() {
    let t = tempfile::tempdir().unwrap();
    let j = t.path().join("journal");
    let js = j.to_str().unwrap();
    // A demo killed while appending leaves records that were not replayed.
    let mut holder = Command::new(FERRY)
        .args([
            "journal",
            "demo",
            "--journal",
            js,
            "--events",
            "100000000",
            "--batch",
            "100",
            "--shards",
            "2",
            "--fsync",
            "never",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    holder.kill().unwrap();
    holder.wait().unwrap();
    let inspect = ferry(&["journal", "inspect", js, "--json"]);
    let summary: serde_json::Value =
        serde_json::from_slice(&inspect.stdout).expect("inspect --json");
    let shard0 = &summary["shards"][0];
    let (first, last) = (
        shard0["first"].as_u64().unwrap(),
        shard0["last"].as_u64().unwrap(),
    );
    assert!(last >= first + 10, "too few records to damage: {summary}");
    let bad = first + 5;
    flip_record(&j, 0, bad);

    let out = ferry(&["journal", "verify", js]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "damaged: shard 0 sequence {bad}: checksum mismatch"
        )),
        "{stdout}"
    );
    refused(&out, 1, &["damaged place", "ferry journal repair"]);

    let out = ferry(&[
        "journal",
        "inspect",
        js,
        "--shard",
        "0",
        "--from",
        &first.to_string(),
        "--limit",
        "100",
    ]);
    refused(&out, 1, &[&format!("shard 0 sequence {bad} is damaged")]);

    let out = ferry(&["journal", "repair", js]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "shard 0: dropped sequences {bad}..={last} ({} records)",
            last + 1 - bad
        )),
        "{stdout}"
    );
    assert!(stdout.contains("re-snapshots"), "{stdout}");
    assert!(ferry(&["journal", "verify", js]).status.success());
    let out = ferry(&[
        "journal",
        "inspect",
        js,
        "--shard",
        "0",
        "--from",
        &first.to_string(),
        "--json",
    ]);
    let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        records["records"].as_array().unwrap().len() as u64,
        bad - first
    );
}

/// `ferry start --config F` with the environment given (and nothing else
/// of the caller's `FERRY_*`), in a fresh directory.
fn with_config(dir: &Path, toml: &str, mode: u32, env: &[(&str, &str)], args: &[&str]) -> Output {
    use std::os::unix::fs::PermissionsExt;
    let f = dir.join("ferry.toml");
    std::fs::write(&f, toml).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    let mut c = Command::new(FERRY);
    for (k, _) in std::env::vars() {
        if k.starts_with("FERRY_") {
            c.env_remove(k);
        }
    }
    c.current_dir(dir)
        .args(["start", "--config", f.to_str().unwrap()])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run ferry")
}

#[test]
fn a_config_file_is_checked_and_flags_and_environment_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A misspelt key: file, line and column, exit 2, nothing written.
    let out = with_config(
        d,
        "shards = 4\n[source]\nurl = [\"etcd://127.0.0.1:1/app\"]\n",
        0o644,
        &[],
        &[],
    );
    refused(&out, 2, &["ferry.toml:3:1: unknown field `url`", "README"]);
    assert!(!d.join("ferry-journal").exists(), "nothing written");
    // A secret in a file others may read.
    let out = with_config(
        d,
        "[source]\nurls = [\"mongodb://u:hunter2@127.0.0.1:1/app\"]\n[target]\nurls = [\"mongodb://127.0.0.1:2/app\"]\n",
        0o644,
        &[],
        &[],
    );
    let e = refused(&out, 2, &["source.urls", "chmod 600"]);
    assert!(!e.contains("hunter2"), "the secret is not echoed: {e}");
    // The file's source is a bad URL; the flag's wins, so the error is
    // about the flag's store (unreachable), not the file's scheme.
    let file = "[source]\nurls = [\"nope://x\"]\n[target]\nurls = [\"etcd://127.0.0.1:9/t\"]\n";
    let out = with_config(d, file, 0o600, &[], &["--check-only"]);
    refused(&out, 2, &["unknown store scheme `nope`"]);
    let out = with_config(
        d,
        file,
        0o600,
        &[],
        &["--check-only", "--source", "etcd://127.0.0.1:9/s"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("nope"),
        "the flag overrides the file: {stderr}"
    );
    assert_eq!(out.status.code(), Some(3), "unreachable etcd: {stderr}");
    // The environment overrides the file too: FERRY_SHARDS=0 is refused
    // by the flag's own range check although the file says 4.
    let out = with_config(
        d,
        &format!("shards = 4\n{file}"),
        0o600,
        &[("FERRY_SHARDS", "0")],
        &["--check-only"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'0'") && stderr.contains("--shards"),
        "{stderr}"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    let out = ferry(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for word in [
        "start",
        "status",
        "stop",
        "verify",
        "--source",
        "--source.read-only",
        "--config",
    ] {
        assert!(
            script.contains(word),
            "`{word}` missing from the bash completion"
        );
    }
    // bash itself parses it.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ferry.bash");
    std::fs::write(&f, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&f).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for shell in ["zsh", "fish"] {
        let out = ferry(&["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let out = ferry(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is bad usage");
    let man = ferry(&["man"]);
    assert!(man.status.success());
    let page = String::from_utf8(man.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH ferry"),
        "{}",
        &page[..200.min(page.len())]
    );
    for word in ["start", "verify", "Exit codes"] {
        assert!(page.contains(word), "`{word}` missing from the man page");
    }
}
