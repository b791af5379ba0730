//! A JSON document in the pipeline: a following tailer and an atomic sink.
//!
//! **Tailer.** Looks at the file every `poll_interval` (50 ms by default:
//! a change reaches the journal well inside a second). A look first
//! compares the file's size, modification time and inode with the last
//! look's, and reads only when one moved; a file that does not parse is a
//! write in progress and is looked at again next time, so only whole
//! documents are ever journaled. Polling rather than inotify: it also sees
//! editors that replace the file, network filesystems and bind mounts, and
//! costs one `stat` per look.
//!
//! By default the whole document is one event at key `""` (a target etcd
//! puts it at the key its URL names, exactly what Cells reads); with
//! `with_keys`, every leaf of the document is its own event at key
//! `/<path>/<to>/<leaf>` (array items by index), its value the leaf's JSON,
//! and a look journals only the leaves that changed, and deletes for those
//! that went. Values are sealed before they reach the journal: Cells'
//! `pydio.json` holds database passwords.
//!
//! Each start snapshots the document again; the position is a look counter
//! that keeps growing across restarts.

use crate::{read, read_settled, write_atomic, DocError, Document, DEFAULT_SETTLE};
use ferry_core::{ErrorKind, Event, Op, Position, Seq, ShardId, ShardSpan, StoreMeta, Value};
use ferry_journal::seal::SealKey;
use ferry_journal::Journal;
use ferry_lag::{now_ms, LagTracker, Phase};
use ferry_replay::{PollFence, Shutdown, Sink, SinkError, SpanAppender};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How the tailer follows the file.
#[derive(Clone, Debug)]
pub struct TailerOptions {
    pub poll_interval: Duration,
    /// One event per JSON leaf instead of one for the whole document.
    pub with_keys: bool,
}

impl Default for TailerOptions {
    fn default() -> Self {
        TailerOptions {
            poll_interval: Duration::from_millis(50),
            with_keys: false,
        }
    }
}

/// Why the tailer stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Doc(#[from] DocError),
    #[error("journal: {0}")]
    Journal(#[from] ferry_replay::AppendError),
}

impl TailError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            // A missing or unreadable file may come back (a rename in progress).
            TailError::Doc(DocError::Missing { .. }) => ErrorKind::Transient,
            TailError::Doc(_) => ErrorKind::Permanent,
            TailError::Journal(e) => e.kind(),
        }
    }
}

pub use ferry_connect::model::leaves;

/// Size, modification time and inode: a look reads the file only when one moved.
type Stamp = (u64, i64, i64, u64);

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
}

/// Follows one JSON document into the journal.
pub struct FileTailer {
    path: PathBuf,
    source: String,
    span: ShardSpan,
    opts: TailerOptions,
    seal: Arc<SealKey>,
    fence: PollFence,
}

impl FileTailer {
    pub fn new(
        path: PathBuf,
        source_name: String,
        span: ShardSpan,
        opts: TailerOptions,
        seal: Arc<SealKey>,
    ) -> Self {
        FileTailer {
            path,
            source: source_name,
            span,
            opts,
            seal,
            fence: PollFence::new(),
        }
    }

    pub fn fence_handle(&self) -> PollFence {
        self.fence.clone()
    }

    fn event(&self, key: Vec<u8>, round: u64, op: Op) -> Event {
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

    fn put(&self, key: Vec<u8>, bytes: &[u8], round: u64) -> Event {
        self.event(
            key,
            round,
            Op::Put {
                value: self.seal.seal(bytes),
                meta: StoreMeta::None,
            },
        )
    }

    /// The events taking the target from `old` (None: nothing known) to `new`.
    fn changes(&self, old: Option<&Document>, new: &Document, round: u64) -> Vec<Event> {
        if !self.opts.with_keys {
            return vec![self.put(Vec::new(), &new.bytes, round)];
        }
        let after = leaves(&new.value);
        let before = old.map(|d| leaves(&d.value)).unwrap_or_default();
        let mut out = Vec::new();
        for (k, v) in &after {
            if before.get(k) != Some(v) {
                out.push(self.put(k.as_bytes().to_vec(), v, round));
            }
        }
        for k in before.keys().filter(|k| !after.contains_key(*k)) {
            out.push(self.event(
                k.as_bytes().to_vec(),
                round,
                Op::Delete {
                    meta: StoreMeta::None,
                },
            ));
        }
        out
    }

    /// Runs until shutdown (`Ok`) or an error that is not transient.
    pub async fn run<J: Journal>(
        self,
        journal: Arc<J>,
        lag: Arc<LagTracker>,
        mut shutdown: Shutdown,
    ) -> Result<(), TailError> {
        let mut app = SpanAppender::load(journal.as_ref(), &lag, self.source.clone(), self.span)?;
        let mut round = app.checkpoint()?.map_or(0, |p| p.order) + 1;

        // Snapshot: the document as it is once it parses.
        let path = self.path.clone();
        let first = loop {
            let p = path.clone();
            match tokio::task::spawn_blocking(move || read_settled(&p, DEFAULT_SETTLE))
                .await
                .expect("read task")
            {
                Ok(d) => break d,
                Err(DocError::Missing { .. }) => {
                    tracing::warn!(file = %path.display(), "cannot read the source document; looking again in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.wait() => return Ok(()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        app.append_snapshot(self.changes(None, &first, round), Position::at(round))
            .await?;
        app.set_phase(Phase::Streaming);
        let mut last = first;
        let mut last_stamp = stamp(&self.path);

        loop {
            tokio::select! {
                () = tokio::time::sleep(self.opts.poll_interval) => {}
                () = shutdown.wait() => return Ok(()),
            }
            let request = self.fence.take_request();
            let now = stamp(&self.path);
            let mut events = Vec::new();
            if now != last_stamp {
                match read(&self.path) {
                    Ok(doc) => {
                        last_stamp = now;
                        if !doc.same_bytes(&last) {
                            round += 1;
                            events = self.changes(Some(&last), &doc, round);
                            last = doc;
                        }
                    }
                    // Half-written or being replaced: look again next time.
                    Err(DocError::Invalid { .. } | DocError::Missing { .. }) => {}
                    Err(e) => {
                        if let Some(r) = request {
                            r.fail(e.to_string());
                        }
                        return Err(e.into());
                    }
                }
            }
            self.fence
                .journal_look(&mut app, &mut round, events, request)
                .await?;
        }
    }
}

/// A JSON file target: whole documents, written atomically.
pub struct FileSink {
    path: PathBuf,
    name: String,
}

impl FileSink {
    pub fn new(path: PathBuf, name: String) -> Self {
        FileSink { path, name }
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn startup(&self) -> Result<(), SinkError> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !dir.is_dir() {
            return Err(SinkError::fatal(format!(
                "{}: the directory {} does not exist; create it first",
                self.name,
                dir.display()
            )));
        }
        Ok(())
    }

    async fn durable_checkpoint(&self, _shard: ShardId) -> Result<Option<Seq>, SinkError> {
        Ok(None)
    }

    async fn apply(&self, _shard: ShardId, events: &[Event]) -> Result<Seq, SinkError> {
        // Only the newest whole document of the batch matters.
        let newest = events.iter().rev().find_map(|e| match &e.op {
            Op::Put { value, .. } => Some((e, value)),
            _ => None,
        });
        if let Some((e, value)) = newest {
            if !e.key.is_empty() {
                return Err(SinkError::permanent(format!(
                    "{}: a file target takes whole documents, and this source sends keys one by one; send it to etcd, or drop withKeys",
                    self.name
                )));
            }
            let Value::Plain(bytes) = value else {
                return Err(SinkError::fatal(format!(
                    "{}: a sealed value reached the sink unopened",
                    self.name
                )));
            };
            let same = std::fs::read(&self.path).is_ok_and(|cur| &cur == bytes);
            if !same {
                let (path, bytes) = (self.path.clone(), bytes.clone());
                tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
                    .await
                    .expect("write task")
                    .map_err(|e| SinkError::transient(e.to_string()))?;
            }
        }
        Ok(events.last().map_or(0, |e| e.seq))
    }

    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_cover_nesting_arrays_and_empty_containers() {
        let doc: serde_json::Value =
            serde_json::from_str(r#"{"a":{"b":1,"c":[true,"x"]},"e":{},"f":[],"g":null}"#).unwrap();
        let l = leaves(&doc);
        let keys: Vec<&str> = l.keys().map(String::as_str).collect();
        assert_eq!(keys, ["/a/b", "/a/c/0", "/a/c/1", "/e", "/f", "/g"]);
        assert_eq!(l["/a/c/1"], br#""x""#);
        assert_eq!(l["/e"], b"{}");
    }
}
