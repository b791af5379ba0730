//! Every Prometheus metric Ferry emits, named once (SPEC section 8).
//!
//! Names are `ferry_<subsystem>_<name>_<unit>`; counters end in `_total`;
//! label values are bounded (`shard`, `source`, `target`, `store`, `phase`,
//! `error_type`). Emit per batch, not per event.

/// Events durably appended to the journal.
pub const JOURNAL_APPENDED_EVENTS_TOTAL: &str = "ferry_journal_appended_events_total";
/// Bytes of frames durably appended to the journal.
pub const JOURNAL_APPENDED_BYTES_TOTAL: &str = "ferry_journal_appended_bytes_total";
/// Write groups committed (one RocksDB write, at most one fsync, each).
pub const JOURNAL_COMMIT_GROUPS_TOTAL: &str = "ferry_journal_commit_groups_total";
/// Time one write group took to become durable.
pub const JOURNAL_COMMIT_SECONDS: &str = "ferry_journal_commit_seconds";
/// Events removed from the journal because every target applied them.
pub const JOURNAL_TRUNCATED_EVENTS_TOTAL: &str = "ferry_journal_truncated_events_total";

/// (name, help) for every metric, so an exporter can describe them once.
pub const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        JOURNAL_APPENDED_EVENTS_TOTAL,
        "Events durably appended to the journal.",
    ),
    (
        JOURNAL_APPENDED_BYTES_TOTAL,
        "Bytes of record frames durably appended to the journal.",
    ),
    (
        JOURNAL_COMMIT_GROUPS_TOTAL,
        "Journal write groups committed (group commit: one write and at most one fsync each).",
    ),
    (
        JOURNAL_COMMIT_SECONDS,
        "Seconds a journal write group took to become durable.",
    ),
    (
        JOURNAL_TRUNCATED_EVENTS_TOTAL,
        "Events removed from the journal after every target applied them.",
    ),
];
