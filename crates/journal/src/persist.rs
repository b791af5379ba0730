//! When appended records reach stable storage.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The fsync policy of a journal. An append resolves only once its batch is
/// durable under this policy, so "acknowledged" always means what it says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PersistPolicy {
    /// fsync every write group. Concurrent appenders share one fsync (group
    /// commit). Survives power loss. The default.
    #[default]
    EveryBatch,
    /// Write at once, fsync at most every `interval`; appends resolve after
    /// the fsync that covers them. Fewer fsyncs, higher latency.
    Interval(Duration),
    /// Never fsync; the OS writes back when it likes. Survives a crash of
    /// Ferry, not of the machine. For benchmarks and throwaway journals.
    Never,
}

impl fmt::Display for PersistPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PersistPolicy::EveryBatch => f.write_str("batch"),
            PersistPolicy::Interval(d) => write!(f, "{}ms", d.as_millis()),
            PersistPolicy::Never => f.write_str("never"),
        }
    }
}

impl FromStr for PersistPolicy {
    type Err = String;

    /// `batch`, `never`, or an interval such as `100ms`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "batch" => Ok(PersistPolicy::EveryBatch),
            "never" => Ok(PersistPolicy::Never),
            _ => s
                .strip_suffix("ms")
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|&n| n > 0)
                .map(|n| PersistPolicy::Interval(Duration::from_millis(n)))
                .ok_or_else(|| {
                    format!("unknown fsync policy `{s}`: use batch, never, or an interval such as 100ms")
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for s in ["batch", "never", "250ms"] {
            assert_eq!(s.parse::<PersistPolicy>().unwrap().to_string(), s);
        }
        assert!("0ms".parse::<PersistPolicy>().is_err());
        assert!("always"
            .parse::<PersistPolicy>()
            .unwrap_err()
            .contains("batch"));
    }
}
