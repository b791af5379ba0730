//! Errors of every etcd operation, classified once.
//!
//! Every message is one sentence naming the store by its redacted URL and
//! saying what to do; none contains a password. [`EtcdError::kind`] tells
//! the pipeline what the error means for it ([`ErrorKind`]).
//!
//! gRPC status codes are matched by number (the gRPC spec fixes them), so
//! this crate needs no direct dependency on tonic.

use ferry_core::ErrorKind;

/// An etcd operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd {store} is unreachable ({detail}); check that etcd runs there and that the host and port in the URL are right")]
    Unreachable { store: String, detail: String },

    #[error("etcd {store} refused the user name or password; fix the credentials in the URL (etcd://user:password@host:port/prefix) or the FERRY_* environment")]
    AuthFailed { store: String },

    #[error("etcd {store} has authentication enabled and no user was given; add user:password to the URL or the FERRY_* environment")]
    AuthRequired { store: String },

    #[error("etcd {store} denied {action} because the user lacks permission; grant its role readwrite on the prefix (etcdctl role grant-permission) or use the root user")]
    PermissionDenied { store: String, action: String },

    #[error("etcd {store} compacted its history to revision {compact_revision}, past revision {resume} that Ferry must resume from; let Ferry take a new snapshot (re-snapshot on compaction) or start over with a new journal")]
    Compacted {
        store: String,
        resume: i64,
        compact_revision: i64,
    },

    #[error("etcd {store} refused key `{key}` ({bytes} bytes) as larger than its request limit of {limit} bytes; raise --max-request-bytes on that etcd or shrink the value at the source")]
    RequestTooLarge {
        store: String,
        key: String,
        bytes: usize,
        limit: usize,
    },

    #[error("etcd {store} has authentication disabled, so Ferry cannot make it read-only through roles; stop its writers yourself and use --source.read-only=external")]
    AuthDisabled { store: String },

    #[error("etcd {store} cannot be used: {reason}")]
    Config { store: String, reason: String },

    #[error("etcd {store} failed during {action}: {detail}")]
    Server {
        store: String,
        action: String,
        detail: String,
        kind: ErrorKind,
    },

    #[error("the journal failed while tailing etcd {store}: {detail}")]
    Journal { store: String, detail: String },

    #[error("the etcd tailer for {store} is not running, so it cannot place a fence; start the agent again")]
    TailerStopped { store: String },
}

impl EtcdError {
    /// What this error means for the pipeline.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EtcdError::Unreachable { .. } | EtcdError::TailerStopped { .. } => ErrorKind::Transient,
            EtcdError::AuthFailed { .. }
            | EtcdError::AuthRequired { .. }
            | EtcdError::PermissionDenied { .. }
            | EtcdError::Compacted { .. }
            | EtcdError::RequestTooLarge { .. }
            | EtcdError::AuthDisabled { .. }
            | EtcdError::Config { .. } => ErrorKind::Permanent,
            EtcdError::Server { kind, .. } => *kind,
            EtcdError::Journal { .. } => ErrorKind::Fatal,
        }
    }
}

/// gRPC status codes (fixed by the gRPC specification).
pub(crate) mod code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const ABORTED: i32 = 10;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// The gRPC code and message of an etcd client error, if it is a status.
pub(crate) fn status(e: &etcd_client::Error) -> Option<(i32, &str)> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some((s.code() as i32, s.message())),
        _ => None,
    }
}

/// A response larger than the client's decoding limit.
pub(crate) fn is_response_too_large(e: &etcd_client::Error) -> bool {
    status(e).is_some_and(|(c, m)| {
        (c == code::OUT_OF_RANGE || c == code::RESOURCE_EXHAUSTED)
            && m.contains("message length too large")
    })
}

/// A put naming a lease the server does not know (expired or revoked).
pub(crate) fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    status(e).is_some_and(|(c, m)| c == code::NOT_FOUND && m.contains("lease not found"))
}

/// Authentication is not enabled on the server (answer to Authenticate).
pub(crate) fn is_auth_not_enabled(e: &etcd_client::Error) -> bool {
    status(e).is_some_and(|(_, m)| m.contains("authentication is not enabled"))
}

/// Classifies an etcd client error that happened on `store` during `action`.
pub(crate) fn classify(store: &str, action: &str, e: &etcd_client::Error) -> EtcdError {
    let store = store.to_string();
    let server = |detail: String, kind| EtcdError::Server {
        store: store.clone(),
        action: action.to_string(),
        detail,
        kind,
    };
    match e {
        etcd_client::Error::TransportError(t) => EtcdError::Unreachable {
            store,
            detail: t.to_string(),
        },
        etcd_client::Error::IoError(io) => EtcdError::Unreachable {
            store,
            detail: io.to_string(),
        },
        etcd_client::Error::GRpcStatus(s) => {
            let msg = s.message().to_string();
            match s.code() as i32 {
                code::UNAVAILABLE => EtcdError::Unreachable { store, detail: msg },
                code::PERMISSION_DENIED => EtcdError::PermissionDenied {
                    store,
                    action: action.to_string(),
                },
                code::INVALID_ARGUMENT | code::UNAUTHENTICATED
                    if msg.contains("authentication failed") =>
                {
                    EtcdError::AuthFailed { store }
                }
                code::INVALID_ARGUMENT if msg.contains("user name is empty") => {
                    EtcdError::AuthRequired { store }
                }
                code::UNAUTHENTICATED => server(msg, ErrorKind::Transient),
                // etcd checks --max-request-bytes itself ("request is too
                // large"); above that plus 512 KiB, gRPC refuses the message
                // before etcd sees it ("received message larger than max").
                code::INVALID_ARGUMENT | code::RESOURCE_EXHAUSTED
                    if msg.contains("request is too large") || msg.contains("larger than max") =>
                {
                    EtcdError::RequestTooLarge {
                        store,
                        key: String::new(),
                        bytes: 0,
                        limit: crate::TARGET_MAX_REQUEST_BYTES,
                    }
                }
                // Too many operations or a duplicate key in one transaction:
                // Ferry's own transaction builder broke its invariant.
                code::INVALID_ARGUMENT
                    if msg.contains("too many operations") || msg.contains("duplicate key") =>
                {
                    server(msg, ErrorKind::Fatal)
                }
                code::RESOURCE_EXHAUSTED if msg.contains("space exceeded") => server(
                    format!(
                        "{msg}; compact and defragment that etcd or raise --quota-backend-bytes"
                    ),
                    ErrorKind::Permanent,
                ),
                code::RESOURCE_EXHAUSTED => server(msg, ErrorKind::Transient),
                code::OUT_OF_RANGE if msg.contains("compacted") => EtcdError::Compacted {
                    store,
                    resume: 0,
                    compact_revision: 0,
                },
                // Leader changes, request timeouts, "no leader", a stream
                // reset: the same request may succeed a moment later.
                code::CANCELLED
                | code::UNKNOWN
                | code::DEADLINE_EXCEEDED
                | code::ABORTED
                | code::INTERNAL => server(msg, ErrorKind::Transient),
                code::NOT_FOUND | code::FAILED_PRECONDITION | code::INVALID_ARGUMENT => {
                    server(msg, ErrorKind::Permanent)
                }
                _ => server(msg, ErrorKind::Transient),
            }
        }
        etcd_client::Error::WatchError(m) | etcd_client::Error::LeaseKeepAliveError(m) => {
            server(m.clone(), ErrorKind::Transient)
        }
        etcd_client::Error::Internal(m) => server(m.clone(), ErrorKind::Transient),
        other => EtcdError::Config {
            store,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_store_and_kinds_are_right() {
        let e = EtcdError::Compacted {
            store: "etcd://h:1/app".into(),
            resume: 5,
            compact_revision: 9,
        };
        let s = e.to_string();
        assert!(
            s.contains("etcd://h:1/app") && s.contains("revision 9") && s.contains("revision 5")
        );
        assert_eq!(e.kind(), ErrorKind::Permanent);
        let e = EtcdError::Unreachable {
            store: "etcd://u:***@h:1/app".into(),
            detail: "connection refused".into(),
        };
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert!(!e.to_string().contains("secret"));
    }
}
