//! Errors of every MongoDB operation, classified once.
//!
//! Every message is one sentence naming the store by its redacted URL and
//! saying what to do; none contains a password. [`MongoError::kind`] tells
//! the pipeline what the error means for it ([`ErrorKind`]).
//!
//! Server error codes are matched by number (MongoDB's `error_codes.yml`
//! fixes them); the driver's own helpers for them are private.

use ferry_core::ErrorKind;
use mongodb::error::{Error, ErrorKind as DriverKind, WriteFailure};

/// A MongoDB operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MongoError {
    #[error("the MongoDB URL {store} is malformed ({reason}); write it as mongodb://user:password@host:27017/db?include=db.*")]
    MalformedUri { store: String, reason: String },

    #[error("MongoDB {store} is unreachable ({detail}); check that the server runs there and that the hosts and ports in the URL are right")]
    Unreachable { store: String, detail: String },

    #[error("MongoDB {store} refused the user name or password; fix the credentials (and authSource) in the URL or the FERRY_* environment")]
    AuthFailed { store: String },

    #[error("MongoDB {store} denied {action} because the user lacks a privilege; grant it the readAnyDatabase role (source) or readWriteAnyDatabase and dbAdminAnyDatabase (target), or use another user")]
    PermissionDenied { store: String, action: String },

    #[error("MongoDB {store} is a standalone server without change streams; run it as a replica set (even a single member: --replSet) so Ferry can follow its changes")]
    NoChangeStreams { store: String },

    #[error("the namespace selection of MongoDB {store} (include {include}, exclude {exclude}) matches no collection; the server holds {databases}: fix the include/exclude patterns (db.coll, db.*) or the URL's database, or create the collections first")]
    NothingSelected {
        store: String,
        include: String,
        exclude: String,
        /// The databases the server does hold, as words.
        databases: String,
    },

    #[error("the target MongoDB {store} already holds {documents} documents in {namespaces}; copying overwrites them, so empty those collections or pass --force")]
    TargetNotEmpty {
        store: String,
        namespaces: String,
        documents: u64,
    },

    #[error("document _id {id} in {namespace} is {bytes} bytes, over the {limit}-byte document limit of the target MongoDB {store}; shrink it at the source or exclude {namespace}")]
    DocumentTooLarge {
        store: String,
        namespace: String,
        id: String,
        bytes: usize,
        limit: usize,
    },

    #[error("MongoDB {store} does not support setUserWriteBlockMode (it needs MongoDB 6.0 or later; SecantusDB has none), so Ferry cannot make it read-only; stop its writers yourself and use --source.read-only=external")]
    WriteBlockUnsupported { store: String },

    #[error("MongoDB {store} no longer holds the change history Ferry must resume from (the oplog moved past the journaled resume token); let Ferry take a new snapshot or give the oplog a longer window")]
    HistoryLost { store: String },

    #[error("MongoDB {store} failed during {action}: {detail}")]
    Server {
        store: String,
        action: String,
        detail: String,
        kind: ErrorKind,
    },

    #[error("the journal failed while tailing MongoDB {store}: {detail}")]
    Journal { store: String, detail: String },

    #[error("the MongoDB tailer for {store} is not running, so it cannot place a fence; start the agent again")]
    TailerStopped { store: String },
}

impl MongoError {
    /// What this error means for the pipeline.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MongoError::Unreachable { .. } | MongoError::TailerStopped { .. } => {
                ErrorKind::Transient
            }
            MongoError::MalformedUri { .. }
            | MongoError::AuthFailed { .. }
            | MongoError::PermissionDenied { .. }
            | MongoError::NoChangeStreams { .. }
            | MongoError::NothingSelected { .. }
            | MongoError::TargetNotEmpty { .. }
            | MongoError::DocumentTooLarge { .. }
            | MongoError::WriteBlockUnsupported { .. }
            | MongoError::HistoryLost { .. } => ErrorKind::Permanent,
            MongoError::Server { kind, .. } => *kind,
            MongoError::Journal { .. } => ErrorKind::Fatal,
        }
    }
}

/// MongoDB server error codes Ferry tells apart.
pub(crate) mod code {
    pub const HOST_UNREACHABLE: i32 = 6;
    pub const HOST_NOT_FOUND: i32 = 7;
    pub const UNAUTHORIZED: i32 = 13;
    pub const AUTHENTICATION_FAILED: i32 = 18;
    pub const NAMESPACE_NOT_FOUND: i32 = 26;
    pub const INDEX_OPTIONS_CONFLICT: i32 = 85;
    pub const INDEX_KEY_SPECS_CONFLICT: i32 = 86;
    pub const COMMAND_NOT_FOUND: i32 = 59;
    pub const NETWORK_TIMEOUT: i32 = 89;
    pub const SHUTDOWN_IN_PROGRESS: i32 = 91;
    pub const WRITE_CONFLICT: i32 = 112;
    pub const NAMESPACE_EXISTS: i32 = 48;
    pub const NO_SUCH_TRANSACTION: i32 = 251;
    pub const INVALID_RESUME_TOKEN: i32 = 260;
    pub const EXCEEDED_TIME_LIMIT: i32 = 262;
    pub const CHANGE_STREAM_FATAL: i32 = 280;
    pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
    pub const DUPLICATE_KEY: i32 = 11000;
    pub const INTERRUPTED_AT_SHUTDOWN: i32 = 11600;
    pub const INTERRUPTED_DUE_TO_REPL_STATE_CHANGE: i32 = 11602;
    pub const NOT_WRITABLE_PRIMARY: i32 = 10107;
    pub const NOT_PRIMARY_NO_SECONDARY_OK: i32 = 13435;
    pub const SOCKET_EXCEPTION: i32 = 9001;
    pub const PRIMARY_STEPPED_DOWN: i32 = 189;
    pub const MAX_TIME_MS_EXPIRED: i32 = 50;
}

/// The server error code of a driver error, if it carries one.
pub(crate) fn error_code(e: &Error) -> Option<i32> {
    match e.kind.as_ref() {
        DriverKind::Command(c) => Some(c.code),
        DriverKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        DriverKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        DriverKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|w| w.first())
            .map(|w| w.code)
            .or_else(|| m.write_concern_error.as_ref().map(|w| w.code)),
        _ => None,
    }
}

/// True for a code that a later attempt may not meet (elections, restarts,
/// time limits, conflicts with another transaction, a write that lost the
/// race to create its collection: NamespaceExists, where a `create` itself
/// takes that code as success).
pub(crate) fn is_transient_code(c: i32) -> bool {
    matches!(
        c,
        code::HOST_UNREACHABLE
            | code::HOST_NOT_FOUND
            | code::NETWORK_TIMEOUT
            | code::SHUTDOWN_IN_PROGRESS
            | code::WRITE_CONFLICT
            | code::NAMESPACE_EXISTS
            | code::NO_SUCH_TRANSACTION
            | code::EXCEEDED_TIME_LIMIT
            | code::INTERRUPTED_AT_SHUTDOWN
            | code::INTERRUPTED_DUE_TO_REPL_STATE_CHANGE
            | code::NOT_WRITABLE_PRIMARY
            | code::NOT_PRIMARY_NO_SECONDARY_OK
            | code::SOCKET_EXCEPTION
            | code::PRIMARY_STEPPED_DOWN
            | code::MAX_TIME_MS_EXPIRED
    )
}

/// Classifies a driver error that happened on `store` during `action`.
pub(crate) fn classify(store: &str, action: &str, e: &Error) -> MongoError {
    let store = store.to_string();
    let server = |detail: String, kind| MongoError::Server {
        store: store.clone(),
        action: action.to_string(),
        detail,
        kind,
    };
    let code = error_code(e);
    match e.kind.as_ref() {
        DriverKind::Authentication { .. } => return MongoError::AuthFailed { store },
        DriverKind::ServerSelection { message, .. } => {
            // The driver reports a failed handshake (bad password) as a
            // server selection timeout whose message carries the cause.
            if message.contains("Authentication failed") || message.contains("AuthenticationFailed")
            {
                return MongoError::AuthFailed { store };
            }
            return MongoError::Unreachable {
                store,
                detail: first_line(message),
            };
        }
        DriverKind::Io(io) => {
            return MongoError::Unreachable {
                store,
                detail: io.to_string(),
            }
        }
        DriverKind::ConnectionPoolCleared { message, .. } => {
            return MongoError::Unreachable {
                store,
                detail: first_line(message),
            }
        }
        DriverKind::InvalidArgument { message, .. }
        | DriverKind::InvalidTlsConfig { message, .. } => {
            return MongoError::MalformedUri {
                store,
                reason: first_line(message),
            }
        }
        _ => {}
    }
    let detail = first_line(&e.to_string());
    match code {
        Some(code::AUTHENTICATION_FAILED) => MongoError::AuthFailed { store },
        Some(code::UNAUTHORIZED) => MongoError::PermissionDenied {
            store,
            action: action.to_string(),
        },
        Some(
            code::CHANGE_STREAM_HISTORY_LOST
            | code::INVALID_RESUME_TOKEN
            | code::CHANGE_STREAM_FATAL,
        ) => MongoError::HistoryLost { store },
        Some(c) if is_transient_code(c) => server(detail, ErrorKind::Transient),
        Some(_) => server(detail, ErrorKind::Permanent),
        None if e.contains_label("TransientTransactionError")
            || e.contains_label("UnknownTransactionCommitResult")
            || e.contains_label("RetryableWriteError") =>
        {
            server(detail, ErrorKind::Transient)
        }
        // Everything else without a code is the driver's own trouble with
        // a connection or a response: worth another attempt.
        None => server(detail, ErrorKind::Transient),
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    line.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let e = MongoError::WriteBlockUnsupported {
            store: "mongodb://u:***@h:1".into(),
        };
        assert_eq!(e.kind(), ErrorKind::Permanent);
        let s = e.to_string();
        assert!(s.contains("--source.read-only=external") && s.contains("mongodb://u:***@h:1"));
        assert_eq!(
            MongoError::Unreachable {
                store: "x".into(),
                detail: "y".into()
            }
            .kind(),
            ErrorKind::Transient
        );
        assert!(is_transient_code(code::WRITE_CONFLICT));
        assert!(!is_transient_code(code::DUPLICATE_KEY));
        // One sentence each: no line breaks.
        assert!(!s.contains('\n'));
    }
}
