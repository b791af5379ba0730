//! Error kinds for the whole pipeline, and what to do about each.
//!
//! Leaf crates define small `thiserror` enums per operation; each of those
//! errors says which [`ErrorKind`] it is. [`ErrorKind::policy`] is the one
//! place that decides what the pipeline does about a kind, so retry
//! behaviour is not re-decided at every call site.

use std::time::Duration;

/// How an error affects the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The store may succeed if asked again (connection reset, leader
    /// change, timeout with a known outcome, throttling).
    Transient,
    /// This shard cannot make progress without an operator (a value the
    /// target refuses, permission denied, corrupt journal record). The
    /// journal is kept; other shards go on.
    Permanent,
    /// The process cannot go on safely (journal I/O failure, a checkpoint
    /// that would move backward, a broken invariant).
    Fatal,
}

/// What the pipeline does about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Retry after the given delay.
    Retry { after: Duration },
    /// Stop the shard, report, keep the journal, wait for the operator.
    StopShard,
    /// Stop everything.
    Fail,
}

/// Backoff bounds for transient errors: fast enough to ride out a leader
/// election (~1 s in etcd), capped so a long outage polls every 10 s rather
/// than hammering a recovering server.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_millis(100);
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(10);

impl ErrorKind {
    /// The policy for this kind on the `attempt`-th consecutive failure
    /// (starting at 0). Transient errors back off exponentially up to
    /// [`DEFAULT_RETRY_MAX`]; they never give up on their own, because an
    /// outage of the target must not lose the migration.
    pub fn policy(self, attempt: u32) -> ErrorPolicy {
        match self {
            ErrorKind::Transient => {
                let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
                let after = DEFAULT_RETRY_INITIAL
                    .saturating_mul(factor)
                    .min(DEFAULT_RETRY_MAX);
                ErrorPolicy::Retry { after }
            }
            ErrorKind::Permanent => ErrorPolicy::StopShard,
            ErrorKind::Fatal => ErrorPolicy::Fail,
        }
    }
}

/// Process exit codes, as documented in the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything asked for was done.
    Success = 0,
    /// Something failed at run time (a store, the disk, corruption found).
    Runtime = 1,
    /// The command line or an input was wrong; nothing was done.
    Usage = 2,
    /// A pre-check refused to go on; nothing was done.
    Refused = 3,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_backs_off_and_caps() {
        assert_eq!(
            ErrorKind::Transient.policy(0),
            ErrorPolicy::Retry {
                after: Duration::from_millis(100)
            }
        );
        assert_eq!(
            ErrorKind::Transient.policy(3),
            ErrorPolicy::Retry {
                after: Duration::from_millis(800)
            }
        );
        assert_eq!(
            ErrorKind::Transient.policy(1000),
            ErrorPolicy::Retry {
                after: DEFAULT_RETRY_MAX
            }
        );
        assert_eq!(ErrorKind::Permanent.policy(0), ErrorPolicy::StopShard);
        assert_eq!(ErrorKind::Fatal.policy(0), ErrorPolicy::Fail);
        assert_eq!(ExitCode::Refused.code(), 3);
    }
}
