//! The CLI's error: one sentence and an exit code.

use ferry_core::{ExitCode, UrlError};
use ferry_journal::JournalError;
use std::fmt;

#[derive(Debug)]
pub struct CliError {
    pub code: ExitCode,
    pub message: String,
}

impl CliError {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<UrlError> for CliError {
    fn from(e: UrlError) -> Self {
        CliError::new(ExitCode::Usage, e.to_string())
    }
}

impl From<JournalError> for CliError {
    fn from(e: JournalError) -> Self {
        let code = match &e {
            JournalError::NotWritable { .. }
            | JournalError::NewerFormat { .. }
            | JournalError::NotAJournal { .. }
            | JournalError::Missing { .. } => ExitCode::Usage,
            JournalError::Locked { .. } => ExitCode::Refused,
            _ => ExitCode::Runtime,
        };
        CliError::new(code, e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::new(ExitCode::Runtime, format!("I/O failed: {e}"))
    }
}
