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

/// Ranges of a key-value route the continuous verifier holds verified.
pub const VERIFY_RANGES_VERIFIED: &str = "ferry_verify_ranges_verified";
/// Ranges of a key-value route not verified at their current state.
pub const VERIFY_RANGES_DIRTY: &str = "ferry_verify_ranges_dirty";
/// Keys of a route whose target differs from the source with no event in flight.
pub const VERIFY_DIFFERENCES: &str = "ferry_verify_differences";

/// Seconds each stage of an event's way took, by `stage`: `journaled`
/// (captured from the source to durable in the journal, per append),
/// `applied` (captured to written on the target, per apply), `apply` (the
/// target write alone), `checkpoint` (recording the applied position),
/// `read` (reading a batch from the journal).
pub const PIPELINE_SECONDS: &str = "ferry_pipeline_seconds";
/// Shards each agent of a coordinated migration owns, by `agent`.
pub const AGENT_SHARDS_OWNED: &str = "ferry_agent_shards_owned";
/// 1 for the tailer leader of a coordinated migration, by `agent`.
pub const AGENT_LEADER: &str = "ferry_agent_leader";

/// (name, help) for every metric, so an exporter can describe them once.
pub const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        AGENT_SHARDS_OWNED,
        "Shards each agent of a coordinated migration owns (label agent: the live agents' ids).",
    ),
    (
        AGENT_LEADER,
        "1 for the agent that leads a coordinated migration (runs the tailers), 0 for the others.",
    ),
    (
        VERIFY_RANGES_VERIFIED,
        "Key ranges the continuous verifier holds verified (equal, untouched since).",
    ),
    (
        VERIFY_RANGES_DIRTY,
        "Key ranges not verified at their current state (the cutover compares these).",
    ),
    (
        VERIFY_DIFFERENCES,
        "Keys whose target differs from the source with no event in flight (written behind Ferry's back?).",
    ),
    (
        PIPELINE_SECONDS,
        "Seconds per stage of an event's way: journaled (capture to durable in the journal), applied (capture to written on the target), apply (the target write), checkpoint (recording the applied position), read (a journal read).",
    ),
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
    (
        SOURCE_HEAD_POSITION,
        "The newest position the source reported (etcd revision).",
    ),
    (SNAPSHOT_COPIED_KEYS_TOTAL, "Keys copied by snapshots."),
    (REPLAY_APPLIED_EVENTS_TOTAL, "Events durably applied to targets."),
    (
        REPLAY_LAG_EVENTS,
        "Events journaled but not yet applied, per shard and target.",
    ),
    (
        REPLAY_LAG_SECONDS,
        "Seconds the oldest unapplied event has waited, per shard and target.",
    ),
    (REPLAY_APPLIED_SEQ, "Last applied journal sequence, per shard and target."),
    (JOURNAL_LAST_SEQ, "Last journaled sequence, per shard."),
    (SINK_ERRORS_TOTAL, "Target errors by error_type."),
    (
        CUTOVER_PHASE,
        "Cutover phase: 0 syncing, 1 waiting for lag, 2 source read-only, 3 draining to the fence, 4 verifying, 5 done, 6 aborted, 7 failed.",
    ),
];

/// The newest position the source reported (etcd revision, …).
pub const SOURCE_HEAD_POSITION: &str = "ferry_source_head_position";
/// Keys copied by snapshots.
pub const SNAPSHOT_COPIED_KEYS_TOTAL: &str = "ferry_snapshot_copied_keys_total";
/// Events applied to targets.
pub const REPLAY_APPLIED_EVENTS_TOTAL: &str = "ferry_replay_applied_events_total";
/// Journaled but unapplied events, per shard and target.
pub const REPLAY_LAG_EVENTS: &str = "ferry_replay_lag_events";
/// Age of the oldest unapplied event, per shard and target.
pub const REPLAY_LAG_SECONDS: &str = "ferry_replay_lag_seconds";
/// Last applied sequence, per shard and target.
pub const REPLAY_APPLIED_SEQ: &str = "ferry_replay_applied_seq";
/// Last journaled sequence, per shard.
pub const JOURNAL_LAST_SEQ: &str = "ferry_journal_last_seq";
/// Errors from targets, by `error_type` (transient, permanent, fatal).
pub const SINK_ERRORS_TOTAL: &str = "ferry_sink_errors_total";
/// The cutover phase as a number (see `ferry_agent::cutover::CutoverPhase`).
pub const CUTOVER_PHASE: &str = "ferry_cutover_phase";
