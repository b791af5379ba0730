//! Builds and runs the Go `bolt-fixture` program (real go.etcd.io/bbolt)
//! for tests and benchmarks; included with `#[path]` where needed.
//!
//! The program is built once per source change into
//! `$CARGO_TARGET_DIR/bolt-fixture/` (default `/var/tmp/ferry-target`), in
//! GOPATH mode against Debian's `golang-github-coreos-bbolt-dev`, offline.
//! Without `go` or the bbolt sources a test prints a skip line, except in
//! CI, where it fails (through `ferry_testkit::require`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const GOPATH: &str = "/usr/share/gocode";
const BBOLT: &str = "/usr/share/gocode/src/go.etcd.io/bbolt";
/// Protobuf's wire encoder (Debian golang-google-protobuf-dev): the
/// fixture writes Cells' ChangeLogs with it.
const PROTOWIRE: &str = "/usr/share/gocode/src/google.golang.org/protobuf/encoding/protowire";

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("tests/bolt-fixture/main.go").exists())
        .expect("the workspace holds tests/bolt-fixture/main.go")
        .join("tests/bolt-fixture")
}

fn build() -> Result<PathBuf, ferry_testkit::TestkitError> {
    let missing = |hint: &str| {
        ferry_testkit::TestkitError::Missing {
        server: "go with bbolt and protobuf (golang-go, golang-github-coreos-bbolt-dev, golang-google-protobuf-dev)",
        hint: hint.to_string(),
    }
    };
    let go_ok = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !go_ok {
        return Err(missing("`go` is not on PATH"));
    }
    if !Path::new(BBOLT).join("db.go").exists() {
        return Err(missing(&format!("{BBOLT} is missing")));
    }
    if !Path::new(PROTOWIRE).join("wire.go").exists() {
        return Err(missing(&format!("{PROTOWIRE} is missing")));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/ferry-target"));
    let dir = target.join("bolt-fixture");
    std::fs::create_dir_all(&dir).expect("create the fixture build dir");
    let bin = dir.join("bolt-fixture");
    let src = source_dir().join("main.go");
    let fresh = match (std::fs::metadata(&bin), std::fs::metadata(&src)) {
        (Ok(b), Ok(s)) => b.modified().ok() >= s.modified().ok(),
        _ => false,
    };
    if !fresh {
        // Built under a unique name and renamed: concurrent builds (tests
        // and benches) never see a half-written binary.
        let tmp = dir.join(format!("bolt-fixture.{}", std::process::id()));
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&tmp)
            .arg(".")
            .current_dir(source_dir())
            .env("GO111MODULE", "off")
            .env("GOPATH", GOPATH)
            .env("GOPROXY", "off")
            .env("GOFLAGS", "")
            .env("GOCACHE", dir.join("gocache"))
            .output()
            .expect("run go build");
        assert!(
            out.status.success(),
            "go build of tests/bolt-fixture failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &bin).expect("install the fixture binary");
    }
    Ok(bin)
}

/// The built program, or `None` (after a printed skip) when Go or bbolt is
/// not installed outside CI.
pub fn program() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| ferry_testkit::require(build())).clone()
}

/// Runs `program mode path args…` and returns its stdout (one JSON line).
pub fn run(bin: &Path, mode: &str, path: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .arg(mode)
        .arg(path)
        .args(args)
        .output()
        .expect("run bolt-fixture");
    assert!(
        out.status.success(),
        "bolt-fixture {mode} {} failed:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A number field of the program's one-line JSON report.
pub fn field(report: &str, name: &str) -> u64 {
    let pat = format!("\"{name}\":");
    let at = report
        .find(&pat)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
        + pat.len();
    report[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number in {report}"))
}

/// (bucket path, key) → value, `None` for a bucket.
pub type Content = BTreeMap<(Vec<Vec<u8>>, Vec<u8>), Option<Vec<u8>>>;

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Reads `<db>.dump` as the Go program wrote it.
pub fn read_dump(db: &Path) -> Content {
    let mut dump = db.as_os_str().to_owned();
    dump.push(".dump");
    let text = std::fs::read_to_string(&dump).expect("read the dump");
    let mut out = Content::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let path = if f[1] == "-" {
            Vec::new()
        } else {
            f[1].split(',').map(unhex).collect()
        };
        match f[0] {
            "B" => out.insert((path, unhex(f[2])), None),
            "V" => out.insert(
                (path, unhex(f[2])),
                Some(unhex(f.get(3).copied().unwrap_or(""))),
            ),
            other => panic!("bad dump line kind {other}"),
        };
    }
    out
}
