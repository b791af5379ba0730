//! The journal directory: creation, the single-writer lock, the format file.
//!
//! Layout of a journal directory:
//! - `FORMAT`: one line, `ferry-journal-format <N>`; written (and fsynced)
//!   before anything else, checked before RocksDB is opened, so a journal
//!   from a newer Ferry is refused without touching a byte of it.
//! - `ferry.lock`: holds an exclusive `flock` while a process has the
//!   journal open for writing, and that process's pid. The kernel drops the
//!   lock when the process dies, even by SIGKILL, so a crash never leaves a
//!   stale lock.
//! - everything else: RocksDB's files.
//!
//! The directory is created mode 0700 and Ferry's own files 0600.

use ferry_journal::JournalError;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// The format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_FILE: &str = "FORMAT";
const FORMAT_PREFIX: &str = "ferry-journal-format ";
pub const LOCK_FILE: &str = "ferry.lock";

fn show(dir: &Path) -> String {
    dir.display().to_string()
}

fn not_writable(dir: &Path, e: &std::io::Error) -> JournalError {
    JournalError::NotWritable {
        dir: show(dir),
        reason: e.kind().to_string(),
    }
}

/// What state the directory is in before RocksDB is opened.
#[derive(Debug, PartialEq, Eq)]
pub enum DirState {
    /// Empty or missing: a new journal may be created.
    New,
    /// A journal of a supported format.
    Existing,
}

/// Reads the directory's state without changing anything.
pub fn inspect(dir: &Path) -> Result<DirState, JournalError> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == IoKind::NotFound => return Ok(DirState::New),
        Err(e) if e.kind() == IoKind::NotADirectory => {
            return Err(if dir.is_file() {
                JournalError::NotAJournal {
                    dir: show(dir),
                    reason: "it is a file, not a directory".into(),
                }
            } else {
                JournalError::NotWritable {
                    dir: show(dir),
                    reason: "a parent of it is a file, not a directory".into(),
                }
            })
        }
        Err(e) => return Err(not_writable(dir, &e)),
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !names.iter().any(|n| n == FORMAT_FILE) {
        if names.iter().all(|n| n == LOCK_FILE) {
            return Ok(DirState::New);
        }
        return Err(JournalError::NotAJournal {
            dir: show(dir),
            reason: format!("it holds {} files and no {FORMAT_FILE} file", names.len()),
        });
    }
    let mut text = String::new();
    File::open(dir.join(FORMAT_FILE))
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| JournalError::Io(format!("reading {}/{FORMAT_FILE}: {e}", show(dir))))?;
    let found = text
        .trim()
        .strip_prefix(FORMAT_PREFIX)
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| JournalError::NotAJournal {
            dir: show(dir),
            reason: format!("its {FORMAT_FILE} file is not a Ferry format line"),
        })?;
    if found > FORMAT_VERSION {
        return Err(JournalError::NewerFormat {
            dir: show(dir),
            found,
            supported: FORMAT_VERSION,
        });
    }
    // Only format 1 exists; an older one would be migrated here.
    if names.iter().any(|n| n == "CURRENT") {
        Ok(DirState::Existing)
    } else {
        // FORMAT written but the crash came before RocksDB created its files.
        Ok(DirState::New)
    }
}

/// Creates the directory (0700) if needed and takes the writer lock. The
/// returned file holds the lock for as long as it lives.
pub fn lock(dir: &Path) -> Result<File, JournalError> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(not_writable(dir, &e)),
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| not_writable(dir, &e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Err(JournalError::Locked { dir: show(dir) }),
        Err(fs::TryLockError::Error(e)) => return Err(not_writable(dir, &e)),
    }
    // The pid is informational, for the operator who finds the lock held.
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(|e| not_writable(dir, &e))?;
    Ok(file)
}

/// Writes the `FORMAT` file of a new journal, durably.
pub fn write_format(dir: &Path) -> Result<(), JournalError> {
    let path = dir.join(FORMAT_FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| not_writable(dir, &e))?;
    writeln!(f, "{FORMAT_PREFIX}{FORMAT_VERSION}")
        .and_then(|()| f.sync_all())
        .and_then(|()| File::open(dir)?.sync_all())
        .map_err(|e| JournalError::Io(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_existing_newer_foreign() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("j");
        assert_eq!(inspect(&d).unwrap(), DirState::New);
        let _l = lock(&d).unwrap();
        assert!(matches!(lock(&d), Err(JournalError::Locked { .. })));
        write_format(&d).unwrap();
        assert_eq!(inspect(&d).unwrap(), DirState::New);
        fs::write(d.join("CURRENT"), "x").unwrap();
        assert_eq!(inspect(&d).unwrap(), DirState::Existing);
        fs::write(d.join(FORMAT_FILE), "ferry-journal-format 9\n").unwrap();
        assert!(matches!(
            inspect(&d),
            Err(JournalError::NewerFormat { found: 9, .. })
        ));
        let other = t.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("notes.txt"), "hi").unwrap();
        assert!(matches!(
            inspect(&other),
            Err(JournalError::NotAJournal { .. })
        ));
        assert!(matches!(
            inspect(&other.join("notes.txt")),
            Err(JournalError::NotAJournal { .. })
        ));
    }
}
