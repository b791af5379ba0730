//! Pre-checks: one line per finding, one sentence per refusal.

use ferry_core::{ExitCode, Position};

/// Prints one pre-check line: `pre-check  <what> <text>`.
pub fn line(what: &str, text: impl AsRef<str>) {
    println!("pre-check  {what:<8} {}", text.as_ref());
}

/// A refused pre-check (or command): one sentence and its exit code.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub code: ExitCode,
    pub message: String,
}

impl Refusal {
    /// Bad input: a URL or flag the user must change (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Refusal {
            code: ExitCode::Usage,
            message: message.into(),
        }
    }

    /// A store that cannot be used as it is (exit 3).
    pub fn refused(message: impl Into<String>) -> Self {
        Refusal {
            code: ExitCode::Refused,
            message: message.into(),
        }
    }

    /// A failure while running (exit 1).
    pub fn runtime(message: impl Into<String>) -> Self {
        Refusal {
            code: ExitCode::Runtime,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What the pre-checks know of the run.
#[derive(Clone, Debug, Default)]
pub struct CheckContext {
    /// `--force`: a target that holds data may be overwritten.
    pub force: bool,
    /// The journal already holds this migration (its targets hold Ferry's
    /// own copy and need not be empty).
    pub resuming: bool,
    /// `--source.read-only=external`.
    pub external_read_only: bool,
    /// Re-snapshots allowed (`--no-resnapshot` not given).
    pub resnapshot: bool,
    /// `--shards`: what a route asks of its source ([`crate::Source::shards`]).
    pub shards: u32,
    /// Where this source's tailer resumes, when resuming.
    pub checkpoint: Option<Position>,
    /// `--allow-empty-source`: a source that holds nothing may start.
    pub allow_empty_source: bool,
}
