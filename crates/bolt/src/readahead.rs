//! Read-ahead on helper threads for walks that read a file in order.
//!
//! Copying pages out of the page cache is most of the cost of reading a
//! whole file (a core copies a few GB/s, and bbolt's own reader copies
//! nothing: it maps the file). bbolt lays a tree out mostly in ascending
//! page ids, so once a walk has read enough in runs, helper threads (one
//! per core, up to [`MAX_HELPERS`]) read the chunks that follow while the
//! walk parses. At most
//! [`AHEAD_CHUNKS`] chunks of [`CHUNK_BYTES`] are asked for at a time, and
//! never more than twice that are unreturned: memory stays bounded. The
//! walk reads pages outside the chunks itself and stops the read-ahead
//! when it keeps missing; chunks it did not use are recycled.
//!
//! A chunk read ahead is read after the walk's snapshot began and before
//! the walk's final meta check, like any page the walk reads itself, so
//! the consistency argument of [`crate::walk`] holds unchanged.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

/// Bytes per chunk read ahead (whole pages; at least one page).
pub(crate) const CHUNK_BYTES: u64 = 512 << 10;
/// Chunks asked for ahead of the walk.
pub(crate) const AHEAD_CHUNKS: usize = 6;
/// Most threads reading ahead (one per core up to this): copying is the
/// cost, and one thread copies a few GB/s.
const MAX_HELPERS: usize = 4;

struct Job {
    chunk: u64,
    buf: Vec<u8>,
}

struct Done {
    chunk: u64,
    buf: Vec<u8>,
    read: io::Result<usize>,
}

/// Chunks `n` cover bytes `n * chunk_bytes ..` of one file.
pub(crate) struct ReadAhead {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    helpers: Vec<JoinHandle<()>>,
    chunk_bytes: usize,
    /// Chunks asked for and still wanted, in the order they will be used.
    wanted: VecDeque<u64>,
    /// Wanted chunks that arrived before the walk asked for them.
    arrived: Vec<Done>,
    /// Jobs sent and not yet received back (wanted or not).
    unreturned: usize,
    free: Vec<Vec<u8>>,
    next: u64,
    /// Chunks from here on lie past the walk's high-water mark.
    end: u64,
}

impl ReadAhead {
    /// Helpers reading `file` in chunks of `chunk_bytes`, up to chunk
    /// `end`; `None` when threads or handles cannot be had.
    pub fn start(file: &File, chunk_bytes: usize, end: u64) -> Option<Self> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut helpers = Vec::new();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        for _ in 0..cores.clamp(1, MAX_HELPERS) {
            let (f, rx, tx) = (file.try_clone().ok()?, Arc::clone(&job_rx), done_tx.clone());
            let helper = std::thread::Builder::new()
                .name("ferry-bolt-readahead".into())
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(Job { chunk, mut buf }) = job else {
                        return;
                    };
                    let offset = chunk * buf.len() as u64;
                    let read = crate::file::read_full_at(&f, &mut buf, offset);
                    if tx.send(Done { chunk, buf, read }).is_err() {
                        return;
                    }
                })
                .ok()?;
            helpers.push(helper);
        }
        Some(ReadAhead {
            jobs: Some(jobs),
            done,
            helpers,
            chunk_bytes,
            wanted: VecDeque::new(),
            arrived: Vec::new(),
            unreturned: 0,
            free: Vec::new(),
            next: 0,
            end,
        })
    }

    /// Forgets the chunks in flight and reads ahead from chunk `from`.
    pub fn restart(&mut self, from: u64) {
        self.wanted.clear();
        self.free.extend(self.arrived.drain(..).map(|d| d.buf));
        self.next = from;
        self.fill();
    }

    /// Stops reading ahead; the chunks in flight are recycled as they come.
    pub fn stop(&mut self) {
        self.restart(self.end);
    }

    pub fn is_running(&self) -> bool {
        !self.wanted.is_empty()
    }

    fn fill(&mut self) {
        let Some(jobs) = &self.jobs else { return };
        while self.wanted.len() < AHEAD_CHUNKS
            && self.unreturned < 2 * AHEAD_CHUNKS
            && self.next < self.end
        {
            let mut buf = self.free.pop().unwrap_or_default();
            buf.resize(self.chunk_bytes, 0);
            if jobs
                .send(Job {
                    chunk: self.next,
                    buf,
                })
                .is_err()
            {
                return;
            }
            self.unreturned += 1;
            self.wanted.push_back(self.next);
            self.next += 1;
        }
    }

    /// Chunk `chunk` (its buffer and the bytes read into it) if it is the
    /// next one in flight or the one after (then the next is given up).
    pub fn take(&mut self, chunk: u64) -> Option<(Vec<u8>, io::Result<usize>)> {
        let at = self.wanted.iter().take(2).position(|&c| c == chunk)?;
        self.wanted.drain(..=at);
        let found = match self.arrived.iter().position(|d| d.chunk == chunk) {
            Some(i) => Some(self.arrived.swap_remove(i)),
            None => self.wait_for(chunk),
        };
        let wanted = &self.wanted;
        let (keep, spare): (Vec<Done>, Vec<Done>) = self
            .arrived
            .drain(..)
            .partition(|d| wanted.contains(&d.chunk));
        self.arrived = keep;
        self.free.extend(spare.into_iter().map(|d| d.buf));
        self.fill();
        let d = found?;
        Some((d.buf, d.read))
    }

    fn wait_for(&mut self, chunk: u64) -> Option<Done> {
        while self.unreturned > 0 {
            let d = self.done.recv().ok()?;
            self.unreturned -= 1;
            if d.chunk == chunk {
                return Some(d);
            }
            if self.wanted.contains(&d.chunk) {
                self.arrived.push(d);
            } else {
                self.free.push(d.buf);
            }
        }
        None
    }

    /// A buffer the walk is done with.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.free.len() < AHEAD_CHUNKS {
            self.free.push(buf);
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Closing the job channel ends the helpers after their current read.
        self.jobs = None;
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}
