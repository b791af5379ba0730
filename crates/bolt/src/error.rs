//! Errors of the Bolt reader and tailer, classified once.
//!
//! Every message is one sentence naming the file (and, for damage, the page)
//! and saying what to do.

use ferry_core::ErrorKind;

/// A Bolt operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoltError {
    #[error("cannot read Bolt file {path}: {detail}; check that the path exists and is readable")]
    Io { path: String, detail: String },

    #[error("{path} is not a Bolt database ({reason}); check the path")]
    NotBolt { path: String, reason: String },

    #[error("Bolt file {path} is damaged at page {page}: {reason}; restore it from a backup or check the disk")]
    Corrupt {
        path: String,
        page: u64,
        reason: String,
    },

    #[error("Bolt file {path} changed under the read (transaction {txid} is no longer the newest); read it again")]
    Moved { path: String, txid: u64 },

    #[error("Bolt file {path} changed under {attempts} reads in a row; its writer commits faster than a read completes, try again when it is quieter")]
    Unstable { path: String, attempts: u32 },

    #[error("Bolt file {path} is locked by a writer (is Cells still running?); stop the process that has it open, then retry")]
    Locked { path: String },

    #[error("the journal failed while tailing Bolt file {path}: {detail}")]
    Journal { path: String, detail: String },

    #[error("the Bolt tailer for {path} is not running, so it cannot place a fence; start the agent again")]
    TailerStopped { path: String },
}

impl BoltError {
    /// What this error means for the pipeline.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BoltError::Io { .. }
            | BoltError::Moved { .. }
            | BoltError::Unstable { .. }
            | BoltError::Locked { .. }
            | BoltError::TailerStopped { .. } => ErrorKind::Transient,
            BoltError::NotBolt { .. } | BoltError::Corrupt { .. } => ErrorKind::Permanent,
            BoltError::Journal { .. } => ErrorKind::Fatal,
        }
    }
}
