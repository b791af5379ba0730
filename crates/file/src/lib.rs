//! A JSON document as a store: Cells keeps its configuration in
//! `pydio.json`, its encrypted config vault in `pydio-vault.json` and its
//! keyring in `cells-vault-key`, each one JSON document.
//!
//! Invariants:
//! - A read never returns a document that does not parse: a writer caught
//!   half-way (a torn write) is waited out ([`read_settled`]), bounded in
//!   time, and a document that stays broken is an error naming the line and
//!   column.
//! - A write is atomic: a temporary file in the same directory, fsynced,
//!   renamed over the target, the directory fsynced. A reader sees the old
//!   document or the new one, never a mix; a crash leaves one of the two.
//! - The bytes are kept exactly as they are: Cells compares and reloads
//!   whole documents, so a copy must be byte for byte, and equality is
//!   reported both ways ([`Document::same_bytes`], [`Document::same_json`]).

pub mod connector;
pub mod dir;
pub mod pipeline;

use serde_json::Value;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`read_settled`] waits for a document being written to parse:
/// editors and Cells itself rewrite these files in well under a second.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
/// How often a document that does not parse yet is read again.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// A document: its exact bytes and what they parse to.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub bytes: Vec<u8>,
    pub value: Value,
}

impl Document {
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Document, DocError> {
        match serde_json::from_slice(&bytes) {
            Ok(value) => Ok(Document { bytes, value }),
            Err(e) => Err(DocError::Invalid {
                path: path.to_path_buf(),
                line: e.line(),
                column: e.column(),
                reason: e
                    .to_string()
                    .split(" at line")
                    .next()
                    .unwrap_or("")
                    .to_string(),
            }),
        }
    }

    /// Byte-for-byte equal.
    pub fn same_bytes(&self, other: &Document) -> bool {
        self.bytes == other.bytes
    }

    /// Equal as JSON (key order and white space aside).
    pub fn same_json(&self, other: &Document) -> bool {
        self.value == other.value
    }
}

/// Why a document could not be read or written. Messages name the file and
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("{} does not exist; check the path", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read {}: {reason}; check its permissions", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("{} is not valid JSON at line {line}, column {column}: {reason}; fix the file", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("cannot write {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
}

/// Reads and parses `path` once.
pub fn read(path: &Path) -> Result<Document, DocError> {
    let bytes = fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DocError::Missing {
            path: path.to_path_buf(),
        },
        _ => DocError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })?;
    Document::parse(path, bytes)
}

/// Reads `path`, waiting up to `settle` for a document that does not parse
/// (a write in progress) to become whole. Missing and unreadable files fail
/// at once.
pub fn read_settled(path: &Path, settle: Duration) -> Result<Document, DocError> {
    let deadline = Instant::now() + settle;
    loop {
        match read(path) {
            Err(DocError::Invalid { .. }) if Instant::now() < deadline => {
                std::thread::sleep(SETTLE_POLL)
            }
            other => return other,
        }
    }
}

/// Replaces `path` with `bytes` atomically (see the module doc). A new
/// file is created 0600; an existing one keeps its mode.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DocError> {
    let err = |e: std::io::Error| DocError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| DocError::Write {
        path: path.to_path_buf(),
        reason: "the path names no file".into(),
    })?;
    let mode = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let tmp = dir.join(format!(
        ".{}.ferry-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_json_names_line_and_column() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("pydio.json");
        fs::write(&p, "{\n  \"a\": 1,\n  \"b\": ]\n}").unwrap();
        let e = read(&p).unwrap_err();
        assert!(
            matches!(
                e,
                DocError::Invalid {
                    line: 3,
                    column: 8,
                    ..
                }
            ),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("line 3, column 8") && msg.contains("fix the file"),
            "{msg}"
        );
        assert!(matches!(
            read(&t.path().join("nope.json")),
            Err(DocError::Missing { .. })
        ));
    }

    #[test]
    fn settled_read_waits_out_a_torn_write() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("doc.json");
        fs::write(&p, "{\"x\": [1, 2").unwrap();
        let p2 = p.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            fs::write(&p2, "{\"x\": [1, 2, 3]}").unwrap();
        });
        let d = read_settled(&p, Duration::from_secs(5)).unwrap();
        writer.join().unwrap();
        assert_eq!(d.value["x"][2], 3);
        fs::write(&p, "{").unwrap();
        assert!(matches!(
            read_settled(&p, Duration::from_millis(100)),
            Err(DocError::Invalid { .. })
        ));
    }

    #[test]
    fn atomic_write_keeps_bytes_and_mode() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("doc.json");
        write_atomic(&p, b"{\"a\":1}").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        let body = b"{ \"b\" : [true, null],\n  \"a\": 1 }\n";
        write_atomic(&p, body).unwrap();
        assert_eq!(fs::read(&p).unwrap(), body);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // Only the document is left in the directory: no temporary files.
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
        let a = read(&p).unwrap();
        let b = Document::parse(&p, b"{\"a\":1,\"b\":[true,null]}".to_vec()).unwrap();
        assert!(a.same_json(&b) && !a.same_bytes(&b));
    }
}
