//! A directory of files as a source: Cells' `certs/` (certmagic's ACME
//! account, certificates and keys), for Vault's `caddycerts` layout.
//!
//! Each regular file under the directory is one event at key `<relative
//! path>`; its value is the document Cells' Vault certificate storage
//! writes for it, `{"<relative path>": "<file content>"}` (the secret's
//! one field is named after the key itself). A look every
//! `poll_interval` (100 ms) compares each file's size, modification time and inode
//! with the last look's and reads only what moved; files that went become
//! deletes. Values are sealed: these are private keys.
//!
//! Contents are text (PEM, JSON) as certmagic writes them; a file that is
//! not UTF-8 is refused in one sentence rather than altered.

use ferry_core::{Event, Op, Position, ShardSpan, StoreMeta};
use ferry_journal::seal::SealKey;
use ferry_journal::Journal;
use ferry_lag::{now_ms, LagTracker, Phase};
use ferry_replay::{PollFence, Shutdown, SpanAppender};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why the directory tailer stopped.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not text (not UTF-8); Cells' Vault certificate store keeps text only")]
    NotText { path: String },
    #[error("journal: {0}")]
    Journal(#[from] ferry_replay::AppendError),
}

type Stamp = (u64, i64, i64, u64);

/// Every regular file under `root` (relative path, stamp), depth-bounded.
pub fn list(root: &Path) -> Result<BTreeMap<String, Stamp>, DirError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| DirError::Read {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        for entry in rd.flatten() {
            let p = entry.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() && depth < 32 {
                stack.push((p, depth + 1));
            } else if m.is_file() {
                let rel = p
                    .strip_prefix(root)
                    .map(|r| r.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.insert(rel, (m.len(), m.mtime(), m.mtime_nsec(), m.ino()));
            }
        }
    }
    Ok(out)
}

/// The document for one file: `{"<rel>": "<content>"}`.
pub fn document(root: &Path, rel: &str) -> Result<Vec<u8>, DirError> {
    let p = root.join(rel);
    let bytes = std::fs::read(&p).map_err(|e| DirError::Read {
        path: p.display().to_string(),
        reason: e.to_string(),
    })?;
    let text = String::from_utf8(bytes).map_err(|_| DirError::NotText {
        path: p.display().to_string(),
    })?;
    let mut m = serde_json::Map::new();
    m.insert(rel.to_string(), serde_json::Value::String(text));
    Ok(serde_json::to_vec(&serde_json::Value::Object(m)).expect("JSON serialises"))
}

/// Follows a directory into the journal; see the module doc.
pub struct DirTailer {
    root: PathBuf,
    source: String,
    span: ShardSpan,
    poll_interval: Duration,
    seal: Arc<SealKey>,
    fence: PollFence,
}

impl DirTailer {
    pub fn new(root: PathBuf, source_name: String, span: ShardSpan, seal: Arc<SealKey>) -> Self {
        DirTailer {
            root,
            source: source_name,
            span,
            poll_interval: Duration::from_millis(100),
            seal,
            fence: PollFence::new(),
        }
    }

    pub fn fence_handle(&self) -> PollFence {
        self.fence.clone()
    }

    fn event(&self, rel: &str, round: u64, op: Op) -> Event {
        let key = rel.as_bytes().to_vec();
        Event {
            shard: self.span.shard_for(&key),
            seq: 0,
            position: Position::at(round),
            key,
            op,
            source_ts_ms: 0,
            capture_ts_ms: now_ms(),
        }
    }

    /// Events from `old` to `new` (every file of `new` when `old` is None).
    fn changes(
        &self,
        old: Option<&BTreeMap<String, Stamp>>,
        new: &BTreeMap<String, Stamp>,
        round: u64,
    ) -> Result<Vec<Event>, DirError> {
        let mut out = Vec::new();
        for (rel, st) in new {
            if old.and_then(|o| o.get(rel)) == Some(st) {
                continue;
            }
            // Gone since the listing (a temporary file renamed away): the
            // next look sees it missing and journals its delete.
            if !self.root.join(rel).exists() {
                continue;
            }
            let doc = document(&self.root, rel)?;
            out.push(self.event(
                rel,
                round,
                Op::Put {
                    value: self.seal.seal(&doc),
                    meta: StoreMeta::None,
                },
            ));
        }
        for rel in old
            .into_iter()
            .flat_map(|o| o.keys())
            .filter(|r| !new.contains_key(*r))
        {
            out.push(self.event(
                rel,
                round,
                Op::Delete {
                    meta: StoreMeta::None,
                },
            ));
        }
        Ok(out)
    }

    pub async fn run<J: Journal>(
        self,
        journal: Arc<J>,
        lag: Arc<LagTracker>,
        mut shutdown: Shutdown,
    ) -> Result<(), DirError> {
        let mut app = SpanAppender::load(journal.as_ref(), &lag, self.source.clone(), self.span)?;
        let mut round = app.checkpoint()?.map_or(0, |p| p.order) + 1;
        let mut seen = list(&self.root)?;
        app.append_snapshot(self.changes(None, &seen, round)?, Position::at(round))
            .await?;
        app.set_phase(Phase::Streaming);
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.poll_interval) => {}
                () = shutdown.wait() => return Ok(()),
            }
            let request = self.fence.take_request();
            let now = match list(&self.root) {
                Ok(n) => n,
                Err(e) => {
                    if let Some(r) = request {
                        r.fail(e.to_string());
                    }
                    return Err(e);
                }
            };
            let mut events = Vec::new();
            if now != seen {
                round += 1;
                events = self.changes(Some(&seen), &now, round)?;
                seen = now;
            }
            self.fence
                .journal_look(&mut app, &mut round, events, request)
                .await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_name_their_field_after_the_key() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("acme/site")).unwrap();
        std::fs::write(t.path().join("acme/site/cert.pem"), "-----BEGIN-----\n").unwrap();
        std::fs::write(t.path().join("bin"), [0xff, 0xfe]).unwrap();
        let l = list(t.path()).unwrap();
        assert_eq!(l.keys().collect::<Vec<_>>(), ["acme/site/cert.pem", "bin"]);
        let d: serde_json::Value =
            serde_json::from_slice(&document(t.path(), "acme/site/cert.pem").unwrap()).unwrap();
        assert_eq!(d["acme/site/cert.pem"], "-----BEGIN-----\n");
        assert!(document(t.path(), "bin")
            .unwrap_err()
            .to_string()
            .contains("not text"));
    }
}
