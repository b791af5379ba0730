//! The agent's state directory (the journal's), where connectors record
//! what a cutover changed on a source until it is settled.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct StateDir(PathBuf);

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateDir(dir.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The record of a read-only switch of `source` (its redacted URL).
    pub fn read_only_record(&self, source: &str) -> PathBuf {
        self.0.join(readonly_file(source))
    }
}

/// The file name of a source's read-only record: one per source.
pub fn readonly_file(source: &str) -> String {
    let digest = fnv1a64(source.as_bytes());
    format!("cutover-readonly-{digest:016x}.json")
}

/// FNV-1a, 64 bits: a stable file name from a source URL (not security).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes `data` to `path` readable by the owner only, durably and
/// atomically (temporary file, fsync, rename), replacing any old file.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data).and_then(|()| f.sync_all())?;
    std::fs::rename(&tmp, path)
}

/// [`write_private`], its error as a sentence naming the file.
pub fn write_record(path: &Path, data: &[u8]) -> Result<(), String> {
    write_private(path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
