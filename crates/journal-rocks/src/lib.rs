//! Ferry's journal on RocksDB.
//!
//! [`RocksJournal`] implements [`ferry_journal::Journal`]. The on-disk layout
//! is documented in [`columns`] (column families and encodings),
//! [`ferry_journal::frame`] (one record) and [`dir`] (the directory, lock and
//! format file). Mutations go through one writer thread ([`writer`]) that
//! group-commits; reads go straight to RocksDB and never see a record before
//! it is durable.

pub mod check;
pub mod columns;
pub mod dir;
mod writer;

pub use check::{repair, verify, Damage, RepairReport, VerifyReport};

use columns::{event_key, parse_event_key};
use ferry_core::{Event, Position, Seq, ShardId};
use ferry_journal::{
    encode_frame_into, AppendBatch, AppendOutcome, Journal, JournalError, PersistPolicy,
    ReadBudget, ShardBounds,
};
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, ReadOptions, DB};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};
use writer::{Command, EncodedShard, Reply, Writer, WriterState};

/// How to open a journal directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Open for writing, creating a new journal if the directory is empty.
    Create,
    /// Open for writing an existing journal only.
    Existing,
    /// Open an existing journal for reading, without the writer lock, so an
    /// operator can inspect a journal a running agent holds.
    ReadOnly,
}

/// The RocksDB journal. Cheap to share behind an `Arc`.
pub struct RocksJournal {
    db: Arc<DB>,
    dir: PathBuf,
    /// `None` when read-only.
    tx: Option<mpsc::Sender<Command>>,
    writer: Option<JoinHandle<()>>,
    ticker: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
    bounds: Arc<Mutex<BTreeMap<ShardId, ShardBounds>>>,
    // Held for its flock; released on drop or process death.
    _lock: Option<File>,
}

/// RocksDB options for the journal: sized so that appending tens of millions
/// of events stays within a few hundred MB of memory.
fn db_options() -> (Options, Vec<ColumnFamilyDescriptor>) {
    let mut db = Options::default();
    db.create_if_missing(true);
    db.create_missing_column_families(true);
    db.set_max_background_jobs(2);
    // One writer thread does every write (see `writer`): the concurrent
    // memtable insert path only costs it synchronisation.
    db.set_allow_concurrent_memtable_write(false);
    db.set_enable_write_thread_adaptive_yield(false);
    // RocksDB's own info LOG is useful to operators but must not grow forever.
    db.set_keep_log_file_num(3);
    db.set_max_log_file_size(8 << 20);
    let cfs = columns::ALL
        .iter()
        .map(|name| {
            let mut o = Options::default();
            if *name == columns::EVENTS {
                // Two 64 MiB memtables: large sequential appends, bounded memory.
                o.set_write_buffer_size(64 << 20);
                o.set_max_write_buffer_number(2);
                o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            } else {
                o.set_write_buffer_size(4 << 20);
            }
            ColumnFamilyDescriptor::new(*name, o)
        })
        .collect();
    (db, cfs)
}

fn io(e: rocksdb::Error) -> JournalError {
    JournalError::Io(e.into_string())
}

impl RocksJournal {
    /// Opens (or creates, with [`OpenMode::Create`]) the journal in `dir`.
    pub fn open(dir: &Path, mode: OpenMode, policy: PersistPolicy) -> Result<Self, JournalError> {
        let state = dir::inspect(dir)?;
        if state == dir::DirState::New && mode != OpenMode::Create {
            return Err(JournalError::Missing {
                dir: dir.display().to_string(),
            });
        }
        let lock = match mode {
            OpenMode::ReadOnly => None,
            _ => Some(dir::lock(dir)?),
        };
        if state == dir::DirState::New {
            dir::write_format(dir)?;
        }
        let (opts, cfs) = db_options();
        let db = match mode {
            OpenMode::ReadOnly => {
                // A journal whose writer is creating it right now has its
                // RocksDB files before its column families: wait that out
                // (briefly) instead of reporting a broken journal.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                loop {
                    match DB::open_cf_for_read_only(&opts, dir, columns::ALL, false) {
                        Ok(db) => break db,
                        Err(e)
                            if e.to_string().contains("Column family not found")
                                && std::time::Instant::now() < deadline =>
                        {
                            std::thread::sleep(std::time::Duration::from_millis(20));
                        }
                        Err(e) => return Err(io(e)),
                    }
                }
            }
            _ => DB::open_cf_descriptors(&opts, dir, cfs).map_err(io)?,
        };
        let db = Arc::new(db);
        Self::check_meta(&db, mode)?;
        let state = load_state(&db)?;
        let bounds = Arc::new(Mutex::new(state.bounds.clone()));
        let mut journal = RocksJournal {
            db: Arc::clone(&db),
            dir: dir.to_path_buf(),
            tx: None,
            writer: None,
            ticker: None,
            bounds: Arc::clone(&bounds),
            _lock: lock,
        };
        if mode != OpenMode::ReadOnly {
            let (tx, rx) = mpsc::channel(writer::CHANNEL_CAPACITY);
            let w = Writer {
                db,
                policy,
                state,
                shared_bounds: bounds,
            };
            let handle = std::thread::Builder::new()
                .name("journal-writer".into())
                .spawn(move || w.run(rx))
                .map_err(|e| JournalError::Io(format!("spawning the journal writer: {e}")))?;
            if let PersistPolicy::Interval(every) = policy {
                let stop = Arc::new(AtomicBool::new(false));
                let t = writer::spawn_ticker(tx.clone(), every, Arc::clone(&stop));
                journal.ticker = Some((t, stop));
            }
            journal.tx = Some(tx);
            journal.writer = Some(handle);
        }
        Ok(journal)
    }

    /// Writes or checks the format version kept inside RocksDB as well, so a
    /// journal whose `FORMAT` file was lost or copied wrongly is caught.
    fn check_meta(db: &DB, mode: OpenMode) -> Result<(), JournalError> {
        let cf = db.cf_handle(columns::META).expect("meta cf");
        match db.get_cf(cf, columns::META_FORMAT_VERSION).map_err(io)? {
            Some(v) => {
                let found = v
                    .as_slice()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| JournalError::Io("meta format_version is malformed".into()))?;
                if found > dir::FORMAT_VERSION {
                    return Err(JournalError::NewerFormat {
                        dir: String::new(),
                        found,
                        supported: dir::FORMAT_VERSION,
                    });
                }
                Ok(())
            }
            None if mode == OpenMode::ReadOnly => Ok(()),
            None => {
                let mut o = rocksdb::WriteOptions::default();
                o.set_sync(true);
                let mut b = rocksdb::WriteBatch::default();
                b.put_cf(
                    cf,
                    columns::META_FORMAT_VERSION,
                    dir::FORMAT_VERSION.to_be_bytes(),
                );
                db.write_opt(b, &o).map_err(io)
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sender(&self) -> Result<&mpsc::Sender<Command>, JournalError> {
        self.tx.as_ref().ok_or(JournalError::Closed)
    }

    fn encode(
        batch: AppendBatch,
    ) -> (
        Vec<EncodedShard>,
        Option<ferry_journal::SourceCheckpoint>,
        usize,
    ) {
        let mut bytes = 0;
        let shards = batch
            .shards
            .into_iter()
            .map(|part| {
                let mut chunk = Vec::new();
                let count = part.events.len() as u64;
                for (i, mut e) in part.events.into_iter().enumerate() {
                    e.shard = part.shard;
                    e.seq = part.first_seq + i as u64;
                    // `len ‖ frame`, the frame encoded in place.
                    let at = chunk.len();
                    chunk.extend_from_slice(&[0; 4]);
                    let len = encode_frame_into(&mut chunk, &e) as u32;
                    chunk[at..at + 4].copy_from_slice(&len.to_be_bytes());
                }
                bytes += chunk.len();
                EncodedShard {
                    shard: part.shard,
                    first_seq: part.first_seq,
                    count,
                    chunk,
                }
            })
            .collect();
        (shards, batch.checkpoint, bytes)
    }

    /// Sends one command to the writer and waits for its answer, from a
    /// thread outside any async runtime.
    fn call_blocking<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(make(reply))
            .map_err(|_| JournalError::Closed)?;
        rx.blocking_recv().map_err(|_| JournalError::Closed)?
    }

    /// Sends one command to the writer and awaits its answer.
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(make(reply))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// [`Journal::append`] for callers outside an async runtime.
    pub fn append_blocking(&self, batch: AppendBatch) -> Result<AppendOutcome, JournalError> {
        let (shards, checkpoint, bytes) = Self::encode(batch);
        self.call_blocking(|reply| Command::Append {
            shards,
            checkpoint,
            bytes,
            reply,
        })
    }

    /// [`Journal::truncate`] for callers outside an async runtime.
    pub fn truncate_blocking(&self, shard: ShardId, through: Seq) -> Result<(), JournalError> {
        self.call_blocking(|reply| Command::Truncate {
            shard,
            through,
            reply,
        })
    }

    /// [`Journal::set_applied`] for callers outside an async runtime.
    pub fn set_applied_blocking(
        &self,
        target: &str,
        shard: ShardId,
        seq: Seq,
    ) -> Result<(), JournalError> {
        self.call_blocking(|reply| Command::SetApplied {
            target: target.to_string(),
            shard,
            seq,
            reply,
        })
    }

    /// Every source checkpoint, by source name.
    pub fn source_checkpoints(&self) -> Result<BTreeMap<String, Position>, JournalError> {
        let cf = self.db.cf_handle(columns::SOURCE_CHECKPOINTS).expect("cf");
        let mut out = BTreeMap::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(io)?;
            let name = String::from_utf8_lossy(&k).into_owned();
            let pos = columns::decode_position(&v).ok_or_else(|| {
                JournalError::Io(format!("the checkpoint of source {name} is damaged"))
            })?;
            out.insert(name, pos);
        }
        Ok(out)
    }

    /// Every applied checkpoint, by (target, shard).
    pub fn applied_all(&self) -> Result<BTreeMap<(String, ShardId), Seq>, JournalError> {
        let cf = self.db.cf_handle(columns::APPLIED).expect("cf");
        let mut out = BTreeMap::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(io)?;
            let key = columns::parse_applied_key(&k)
                .ok_or_else(|| JournalError::Io("an applied checkpoint key is damaged".into()))?;
            let seq = columns::decode_seq(&v).ok_or_else(|| {
                JournalError::Io(format!("the applied checkpoint of {} is damaged", key.0))
            })?;
            out.insert(key, seq);
        }
        Ok(out)
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }
}

/// The first sequence of the chunk of `shard` that starts at or before
/// `seq`, if there is one.
pub(crate) fn chunk_start(
    db: &DB,
    shard: ShardId,
    seq: Seq,
) -> Result<Option<Seq>, rocksdb::Error> {
    let cf = db.cf_handle(columns::EVENTS).expect("events cf");
    let mut it = db.raw_iterator_cf(cf);
    it.seek_for_prev(event_key(shard, seq));
    it.status()?;
    Ok(it
        .key()
        .and_then(parse_event_key)
        .filter(|(s, _)| *s == shard)
        .map(|(_, start)| start))
}

fn load_state(db: &DB) -> Result<WriterState, JournalError> {
    let mut bounds = BTreeMap::new();
    let cf = db.cf_handle(columns::SHARDS).expect("shards cf");
    for item in db.iterator_cf(cf, IteratorMode::Start) {
        let (k, v) = item.map_err(io)?;
        let shard = columns::parse_shard_key(&k)
            .ok_or_else(|| JournalError::Io("a shard bounds key is damaged".into()))?;
        let b = columns::decode_bounds(&v)
            .ok_or_else(|| JournalError::Io(format!("the bounds of shard {shard} are damaged")))?;
        bounds.insert(shard, b);
    }
    let mut checkpoints = HashMap::new();
    let cf = db.cf_handle(columns::SOURCE_CHECKPOINTS).expect("cf");
    for item in db.iterator_cf(cf, IteratorMode::Start) {
        let (k, v) = item.map_err(io)?;
        let name = String::from_utf8_lossy(&k).into_owned();
        // A damaged checkpoint is reported by verify; for validation treat
        // it as absent rather than refusing to open.
        if let Some(p) = columns::decode_position(&v) {
            checkpoints.insert(name, p);
        }
    }
    let mut applied = HashMap::new();
    let cf = db.cf_handle(columns::APPLIED).expect("cf");
    for item in db.iterator_cf(cf, IteratorMode::Start) {
        let (k, v) = item.map_err(io)?;
        if let (Some(key), Some(seq)) = (columns::parse_applied_key(&k), columns::decode_seq(&v)) {
            applied.insert(key, seq);
        }
    }
    Ok(WriterState {
        bounds,
        checkpoints,
        applied,
    })
}

impl Drop for RocksJournal {
    fn drop(&mut self) {
        if let Some((t, stop)) = self.ticker.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = t.join();
        }
        if let Some(tx) = self.tx.take() {
            // The writer drains what is queued, syncs, and exits.
            let _ = tx.try_send(Command::Shutdown);
            drop(tx);
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Journal for RocksJournal {
    async fn append(&self, batch: AppendBatch) -> Result<AppendOutcome, JournalError> {
        let (shards, checkpoint, bytes) = Self::encode(batch);
        self.call(|reply| Command::Append {
            shards,
            checkpoint,
            bytes,
            reply,
        })
        .await
    }

    fn read(
        &self,
        shard: ShardId,
        from: Seq,
        budget: ReadBudget,
    ) -> Result<Vec<Event>, JournalError> {
        let Some(b) = self.bounds(shard)? else {
            return Ok(Vec::new());
        };
        // Truncated events are gone, also when the whole shard is
        // truncated (its last chunk may still hold them on disk).
        if from.max(1) < b.first {
            return Err(JournalError::Corrupt {
                shard,
                seq: from,
                reason: format!("it was truncated (the shard now starts at {})", b.first),
            });
        }
        let from = from.max(1);
        if from > b.last {
            return Ok(Vec::new());
        }
        let cf = self.db.cf_handle(columns::EVENTS).expect("events cf");
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(event_key(shard, b.last.saturating_add(1)).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(cf, ro);
        // Start at the chunk holding `from`: the last one starting at or before it.
        it.seek_for_prev(event_key(shard, from));
        if !it.valid()
            || it
                .key()
                .and_then(parse_event_key)
                .is_none_or(|(s, _)| s != shard)
        {
            it.seek(event_key(shard, from));
        }
        let missing = |seq| JournalError::Corrupt {
            shard,
            seq,
            reason: "the record is missing".into(),
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut expected = from;
        'chunks: while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            let Some((s, start)) = parse_event_key(k) else {
                return Err(JournalError::Corrupt {
                    shard,
                    seq: expected,
                    reason: "a record key is malformed".into(),
                });
            };
            if s != shard || start > expected {
                return Err(missing(expected));
            }
            for (i, rec) in columns::records(v).enumerate() {
                let seq = start + i as u64;
                if seq < expected {
                    continue;
                }
                if seq > b.last
                    || out.len() >= budget.max_events
                    || (bytes >= budget.max_bytes && !out.is_empty())
                {
                    break 'chunks;
                }
                let (_, frame) = rec.map_err(|_| JournalError::Corrupt {
                    shard,
                    seq,
                    reason: "the record's length runs past its chunk".into(),
                })?;
                let event = ferry_journal::decode_record(frame, shard, seq)?;
                bytes += frame.len();
                out.push(event);
                expected = seq + 1;
            }
            it.next();
        }
        it.status().map_err(io)?;
        let wanted_more =
            out.len() < budget.max_events && (bytes < budget.max_bytes || out.is_empty());
        if wanted_more && expected <= b.last {
            return Err(missing(expected));
        }
        Ok(out)
    }

    fn bounds(&self, shard: ShardId) -> Result<Option<ShardBounds>, JournalError> {
        Ok(self
            .bounds
            .lock()
            .expect("bounds lock")
            .get(&shard)
            .copied())
    }

    fn shards(&self) -> Result<Vec<ShardId>, JournalError> {
        Ok(self
            .bounds
            .lock()
            .expect("bounds lock")
            .keys()
            .copied()
            .collect())
    }

    async fn truncate(&self, shard: ShardId, through: Seq) -> Result<(), JournalError> {
        self.call(|reply| Command::Truncate {
            shard,
            through,
            reply,
        })
        .await
    }

    fn source_checkpoint(&self, source: &str) -> Result<Option<Position>, JournalError> {
        let cf = self.db.cf_handle(columns::SOURCE_CHECKPOINTS).expect("cf");
        match self.db.get_cf(cf, source.as_bytes()).map_err(io)? {
            None => Ok(None),
            Some(v) => columns::decode_position(&v).map(Some).ok_or_else(|| {
                JournalError::Io(format!("the checkpoint of source {source} is damaged"))
            }),
        }
    }

    async fn set_applied(
        &self,
        target: &str,
        shard: ShardId,
        seq: Seq,
    ) -> Result<(), JournalError> {
        self.call(|reply| Command::SetApplied {
            target: target.to_string(),
            shard,
            seq,
            reply,
        })
        .await
    }

    fn applied(&self, target: &str, shard: ShardId) -> Result<Option<Seq>, JournalError> {
        let cf = self.db.cf_handle(columns::APPLIED).expect("cf");
        Ok(self
            .db
            .get_cf(cf, columns::applied_key(target, shard))
            .map_err(io)?
            .and_then(|v| columns::decode_seq(&v)))
    }
}

#[cfg(test)]
mod tests;
