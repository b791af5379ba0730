//! `ferry start` pre-checks: everything that can be known before any data
//! moves, asked of each route's connectors. Each check prints one line;
//! the first refusal ends the run with one sentence and exit code 3 (2 for
//! bad input), and nothing is written.

use crate::error::CliError;
use ferry_agent::routes::Route;
use ferry_connect::{CheckContext, Refusal};
use ferry_core::{ExitCode, Position};
use std::fs::File;
use std::path::Path;

/// Journals smaller than this much free space are refused: a snapshot of a
/// typical etcd (a few hundred MB at most) plus compaction headroom.
const MIN_FREE_JOURNAL_BYTES: u64 = 1 << 30;

pub use ferry_connect::check::line;

fn refusal(r: Refusal) -> CliError {
    CliError::new(r.code, r.message)
}

/// The route's source, then each of its targets, as their connectors check
/// them.
pub async fn route(route: &Route, ctx: &CheckContext) -> Result<(), CliError> {
    route.source.precheck(ctx).await.map_err(refusal)?;
    for t in &route.targets {
        t.precheck(route.source.as_ref(), ctx)
            .await
            .map_err(refusal)?;
    }
    Ok(())
}

/// The journal in Kafka, opened to read, when it exists.
pub async fn kafka_journal(url: &str) -> Option<ferry_journal_kafka::KafkaJournal> {
    let url = ferry_journal_kafka::JournalUrl::parse(url).ok()?;
    ferry_journal_kafka::KafkaJournal::open(&url, 0, ferry_journal_kafka::Role::Reader)
        .await
        .ok()
}

/// Where `source`'s tailer resumes, from the journal at `dir` (read-only).
pub fn checkpoint(dir: &Path, source: &str) -> Option<Position> {
    use ferry_journal::Journal;
    let j = ferry_journal_rocks::RocksJournal::open(
        dir,
        ferry_journal_rocks::OpenMode::ReadOnly,
        ferry_journal::PersistPolicy::Never,
    )
    .ok()?;
    j.source_checkpoint(source).ok().flatten()
}

/// Whether a live agent holds the journal's lock (without creating anything).
pub fn agent_running(dir: &Path) -> bool {
    match File::open(dir.join(ferry_journal_rocks::dir::LOCK_FILE)) {
        Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// Checks the journal directory without creating it.
pub fn journal(dir: &Path, in_kafka: bool) -> Result<(), CliError> {
    // With the journal in Kafka the directory holds only the agent's files.
    if !in_kafka {
        ferry_journal_rocks::dir::inspect(dir)?;
    }
    if agent_running(dir) {
        return Err(ferry_journal::JournalError::Locked {
            dir: dir.display().to_string(),
        }
        .into());
    }
    // The nearest existing ancestor must be writable by us.
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p.to_path_buf(),
            _ => {
                probe = std::path::PathBuf::from(".");
                break;
            }
        }
    }
    if nix::unistd::access(&probe, nix::unistd::AccessFlags::W_OK).is_err() {
        return Err(ferry_journal::JournalError::NotWritable {
            dir: dir.display().to_string(),
            reason: format!("permission denied on {}", probe.display()),
        }
        .into());
    }
    let free = nix::sys::statvfs::statvfs(&probe)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(u64::MAX);
    if free < MIN_FREE_JOURNAL_BYTES {
        return Err(CliError::new(
            ExitCode::Refused,
            format!(
                "only {} MiB are free for the journal in {}; free at least {} MiB or choose another --journal",
                free >> 20,
                probe.display(),
                MIN_FREE_JOURNAL_BYTES >> 20
            ),
        ));
    }
    line(
        "journal",
        format!(
            "{}: writable, not in use, {} GiB free",
            dir.display(),
            free >> 30
        ),
    );
    Ok(())
}
