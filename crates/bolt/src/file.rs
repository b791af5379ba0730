//! A Bolt file opened for reading, without its lock.
//!
//! bbolt writers hold an exclusive `flock` for as long as the database is
//! open, and bbolt's own read-only mode asks for a shared one, so it would
//! wait for the writer to close. This reader takes no lock: it reads pages
//! with positional reads and relies on bbolt's copy-on-write discipline
//! for consistency (see [`crate::walk`]).

use crate::format::{self, Meta, MetaProblem, META_SIZE, PAGE_HEADER, PAGE_SIZES};
use crate::BoltError;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

enum Source {
    File(File),
    /// Whole file contents (fuzzing, tests).
    Memory(Vec<u8>),
}

/// An open Bolt file. Cheap to keep open; every read goes to the file.
pub struct BoltFile {
    path: String,
    source: Source,
    page_size: u32,
}

impl std::fmt::Debug for BoltFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoltFile")
            .field("path", &self.path)
            .field("page_size", &self.page_size)
            .finish()
    }
}

impl BoltFile {
    /// Opens `path` read-only and checks that it is a Bolt database (a
    /// valid meta page). Takes no lock.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, BoltError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| BoltError::Io {
            path: name.clone(),
            detail: e.to_string(),
        })?;
        Self::from_source(name, Source::File(file))
    }

    /// A Bolt "file" held in memory, named `name` in errors.
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<Self, BoltError> {
        Self::from_source(name.into(), Source::Memory(bytes))
    }

    fn from_source(path: String, source: Source) -> Result<Self, BoltError> {
        let mut file = BoltFile {
            path,
            source,
            page_size: 0,
        };
        file.page_size = file.detect_page_size()?;
        // A file whose metas are both invalid is refused at open.
        file.head()?;
        Ok(file)
    }

    /// The file's name as errors show it.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    fn len(&self) -> Result<u64, BoltError> {
        match &self.source {
            Source::File(f) => f.metadata().map(|m| m.len()).map_err(|e| self.io(e)),
            Source::Memory(b) => Ok(b.len() as u64),
        }
    }

    /// A second handle on the file for reads from another thread, or
    /// `None` when the file is in memory (or the handle cannot be had).
    pub(crate) fn clone_handle(&self) -> Option<File> {
        match &self.source {
            Source::File(f) => f.try_clone().ok(),
            Source::Memory(_) => None,
        }
    }

    pub(crate) fn io(&self, e: std::io::Error) -> BoltError {
        BoltError::Io {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    pub(crate) fn corrupt(&self, page: u64, reason: impl Into<String>) -> BoltError {
        BoltError::Corrupt {
            path: self.path.clone(),
            page,
            reason: reason.into(),
        }
    }

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of
    /// the file.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, BoltError> {
        match &self.source {
            Source::File(f) => read_full_at(f, buf, offset).map_err(|e| self.io(e)),
            Source::Memory(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let n = buf.len().min(b.len() - start);
                buf[..n].copy_from_slice(&b[start..start + n]);
                Ok(n)
            }
        }
    }

    fn meta_at(&self, offset: u64) -> Result<Result<Meta, MetaProblem>, BoltError> {
        let mut buf = [0u8; META_SIZE];
        let n = self.read_at(&mut buf, offset + PAGE_HEADER as u64)?;
        Ok(format::parse_meta(&buf[..n]))
    }

    /// bbolt's rule: the page size from meta 0, else the first candidate
    /// size at which meta 1 is valid.
    fn detect_page_size(&self) -> Result<u32, BoltError> {
        let first = self.meta_at(0)?;
        if let Ok(m) = first {
            return Ok(m.page_size);
        }
        for shift in PAGE_SIZES {
            let size = 1u32 << shift;
            if let Ok(Ok(m)) = self.meta_at(u64::from(size)) {
                if m.page_size == size {
                    return Ok(size);
                }
            }
        }
        let len = self.len()?;
        Err(match first {
            Err(MetaProblem::NotBolt(reason)) => BoltError::NotBolt {
                path: self.path.clone(),
                reason: if len < (PAGE_HEADER + META_SIZE) as u64 {
                    format!("{len} bytes, too short for a Bolt meta page")
                } else {
                    reason.to_string()
                },
            },
            Err(MetaProblem::Invalid(reason)) => self.corrupt(
                0,
                format!("{reason}, and no valid second meta page was found"),
            ),
            Ok(_) => unreachable!("a valid first meta returned above"),
        })
    }

    /// The current meta: the valid one of pages 0 and 1 with the higher
    /// transaction id. Reads the file every time (the writer moves it).
    pub fn head(&self) -> Result<Meta, BoltError> {
        let ps = u64::from(self.page_size);
        let mut best: Option<(u64, Meta)> = None;
        let mut problems = Vec::new();
        for page in 0..2u64 {
            match self.meta_at(page * ps)? {
                Ok(m) if m.page_size != self.page_size => problems.push(format!(
                    "meta page {page} says page size {} but meta 0 says {}",
                    m.page_size, self.page_size
                )),
                Ok(m) => {
                    if best.is_none_or(|(_, b)| m.txid > b.txid) {
                        best = Some((page, m));
                    }
                }
                Err(MetaProblem::NotBolt(r)) => problems.push(format!("meta page {page}: {r}")),
                Err(MetaProblem::Invalid(r)) => problems.push(format!("meta page {page}: {r}")),
            }
        }
        let Some((page, meta)) = best else {
            return Err(self.corrupt(0, format!("no valid meta page ({})", problems.join("; "))));
        };
        let len = self.len()?;
        let need = meta.hwm.saturating_mul(ps);
        if need > len {
            return Err(self.corrupt(
                page,
                format!(
                    "the meta of transaction {} covers {} pages ({need} bytes) but the file has only {len} bytes; it was truncated",
                    meta.txid, meta.hwm
                ),
            ));
        }
        Ok(meta)
    }
}

/// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the
/// file.
pub(crate) fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
