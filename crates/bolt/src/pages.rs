//! Page reads for one walk: runs of pages in one `pread`, served borrowed.
//!
//! A walk needs one page at a time, in tree order, and bbolt mostly lays a
//! tree out in ascending page ids. So when the page asked for is not in a
//! buffer, the reader also reads the pages the walk will ask for next (the
//! caller passes its pending page ids, next first) as long as they follow
//! in the file with gaps of at most [`MAX_GAP_PAGES`], up to [`RUN_BYTES`].
//! Pages are slices of reused buffers: no read and no allocation per page.
//! A layout with no runs costs what reading page by page costs; pages read
//! but not asked for are bounded by the gap.
//!
//! Once a walk has read [`AHEAD_AFTER_PAGES`] pages in runs of more than
//! one page, helper threads read the file ahead of it in chunks (see
//! [`crate::readahead`]); a small walk, such as a change tracker's cheap
//! path, never starts them. Pages outside the chunks (branch pages bbolt
//! wrote elsewhere, say) are read as runs into a side buffer;
//! [`MAX_MISSES`] of them in a row stop the read-ahead.
//!
//! Memory: the current run or chunk, the side run, the read-ahead's bounded
//! chunks, and one buffer for the largest page whose overflow did not fit.
//!
//! Every page served has been checked: its id lies in `2..hwm`, its header
//! names it, and its overflow pages lie within `hwm` and the file.

use crate::file::BoltFile;
use crate::format::{self, Header};
use crate::readahead::{ReadAhead, CHUNK_BYTES};
use crate::BoltError;
use std::ops::Range;

/// The most bytes one run reads (whole pages; at least one page).
pub(crate) const RUN_BYTES: u64 = 1 << 20;
/// Pages not asked for that a run may read to join two that are.
pub(crate) const MAX_GAP_PAGES: u64 = 4;
/// Pages read in runs after which the reader reads ahead on helper threads
/// (16 MiB of 4 KiB pages: threads pay off only on big reads).
pub(crate) const AHEAD_AFTER_PAGES: u64 = 4096;
/// Pages in a row found outside the read-ahead's chunks that stop it.
pub(crate) const MAX_MISSES: u32 = 16;

/// A checked page in a [`PageReader`]; its bytes via [`PageReader::bytes`].
#[derive(Clone, Debug)]
pub(crate) struct Loaded {
    pub header: Header,
    at: Range<usize>,
    buf: Buf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Buf {
    Main,
    Side,
    Big,
}

/// Pages `first..first + loaded` of the file.
#[derive(Default)]
struct Run {
    bytes: Vec<u8>,
    first: u64,
    loaded: u64,
}

impl Run {
    fn holds(&self, pgid: u64) -> bool {
        (self.first..self.first + self.loaded).contains(&pgid)
    }
}

#[derive(Default)]
pub(crate) struct PageReader {
    /// The current chunk read ahead, or the last run read directly.
    main: Run,
    /// Runs read directly while the read-ahead runs.
    side: Run,
    /// A page whose overflow runs past the end of its run.
    big: Vec<u8>,
    /// Pages read directly in runs of more than one page.
    run_pages: u64,
    /// Pages in a row not found in the read-ahead's chunks.
    misses: u32,
    ahead: Option<ReadAhead>,
}

impl PageReader {
    /// The bytes of a page this reader returned; valid until the next
    /// `load` (which may replace its buffer).
    pub fn bytes(&self, page: &Loaded) -> &[u8] {
        let buf = match page.buf {
            Buf::Main => &self.main.bytes,
            Buf::Side => &self.side.bytes,
            Buf::Big => &self.big,
        };
        &buf[page.at.clone()]
    }

    /// Loads page `pgid` with its overflow pages; `hwm` bounds valid ids
    /// and `next` is the ids the walk will ask for after it, in order.
    pub fn load(
        &mut self,
        file: &BoltFile,
        pgid: u64,
        hwm: u64,
        next: impl Iterator<Item = u64>,
    ) -> Result<Loaded, BoltError> {
        if pgid < 2 || pgid >= hwm {
            return Err(file.corrupt(
                pgid,
                format!("the page id lies outside the file's data pages 2..{hwm}"),
            ));
        }
        let ps = u64::from(file.page_size());
        let which = if self.main.holds(pgid) {
            Buf::Main
        } else if self.side.holds(pgid) {
            Buf::Side
        } else if self.take_ahead(file, pgid, ps)? {
            self.misses = 0;
            Buf::Main
        } else if self.ahead.as_ref().is_some_and(ReadAhead::is_running) {
            read_run(file, &mut self.side, pgid, hwm, ps, next)?;
            self.misses += 1;
            if self.misses >= MAX_MISSES {
                self.stop_ahead();
            }
            Buf::Side
        } else {
            read_run(file, &mut self.main, pgid, hwm, ps, next)?;
            if self.main.loaded > 1 {
                self.run_pages += self.main.loaded;
                if self.run_pages >= AHEAD_AFTER_PAGES {
                    self.start_ahead(file, hwm, ps);
                }
            }
            Buf::Main
        };
        let run = if which == Buf::Main {
            &self.main
        } else {
            &self.side
        };
        let off = ((pgid - run.first) * ps) as usize;
        let first_page = &run.bytes[off..off + ps as usize];
        let h =
            format::header(first_page).ok_or_else(|| file.corrupt(pgid, "short page header"))?;
        let id = u64::from_le_bytes(first_page[..8].try_into().unwrap_or_default());
        if id != pgid {
            return Err(file.corrupt(pgid, format!("the page header says it is page {id}")));
        }
        let span = u64::from(h.overflow) + 1;
        if pgid + span > hwm {
            return Err(file.corrupt(
                pgid,
                format!(
                    "its {} overflow pages run past the file's {hwm} pages",
                    h.overflow
                ),
            ));
        }
        let len = (span * ps) as usize;
        if pgid + span <= run.first + run.loaded {
            return Ok(Loaded {
                header: h,
                at: off..off + len,
                buf: which,
            });
        }
        self.big.clear();
        self.big.resize(len, 0);
        if file.read_at(&mut self.big, pgid * ps)? < len {
            return Err(file.corrupt(pgid, "its overflow pages lie beyond the end of the file"));
        }
        Ok(Loaded {
            header: h,
            at: 0..len,
            buf: Buf::Big,
        })
    }

    /// Makes the read-ahead's chunk holding `pgid` the main run, if the
    /// read-ahead runs and has it next.
    fn take_ahead(&mut self, file: &BoltFile, pgid: u64, ps: u64) -> Result<bool, BoltError> {
        let Some(ahead) = self.ahead.as_mut().filter(|a| a.is_running()) else {
            return Ok(false);
        };
        let chunk_pages = (CHUNK_BYTES / ps).max(1);
        let Some((buf, read)) = ahead.take(pgid / chunk_pages) else {
            return Ok(false);
        };
        let old = std::mem::replace(&mut self.main.bytes, buf);
        ahead.recycle(old);
        self.main.first = pgid / chunk_pages * chunk_pages;
        self.main.loaded = 0;
        self.main.loaded = read.map_err(|e| file.io(e))? as u64 / ps;
        Ok(self.main.holds(pgid))
    }

    fn start_ahead(&mut self, file: &BoltFile, hwm: u64, ps: u64) {
        let chunk_pages = (CHUNK_BYTES / ps).max(1);
        let from = (self.main.first + self.main.loaded) / chunk_pages;
        if self.ahead.is_none() {
            let Some(handle) = file.clone_handle() else {
                return;
            };
            let end = hwm.div_ceil(chunk_pages);
            self.ahead = ReadAhead::start(&handle, (chunk_pages * ps) as usize, end);
        }
        if let Some(ahead) = &mut self.ahead {
            ahead.restart(from);
        }
    }

    fn stop_ahead(&mut self) {
        if let Some(ahead) = &mut self.ahead {
            ahead.stop();
        }
        self.misses = 0;
        self.run_pages = 0;
    }
}

/// Reads `pgid` and the pages of `next` that follow it closely into `run`.
fn read_run(
    file: &BoltFile,
    run: &mut Run,
    pgid: u64,
    hwm: u64,
    ps: u64,
    next: impl Iterator<Item = u64>,
) -> Result<(), BoltError> {
    let limit = pgid + (RUN_BYTES / ps).max(1);
    let mut end = pgid + 1;
    for q in next {
        if q < end || q >= limit || q > end + MAX_GAP_PAGES {
            break;
        }
        end = q + 1;
    }
    let want = ((end.min(hwm) - pgid) * ps) as usize;
    if run.bytes.len() < want {
        run.bytes.resize(want, 0);
    }
    run.loaded = 0;
    let n = file.read_at(&mut run.bytes[..want], pgid * ps)?;
    run.first = pgid;
    run.loaded = n as u64 / ps;
    if run.loaded == 0 {
        return Err(file.corrupt(pgid, "the page lies beyond the end of the file"));
    }
    Ok(())
}
