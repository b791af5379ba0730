//! The record value: a Debezium-shaped change event.
//!
//! ```json
//! {"before": null,
//!  "after": {"key": "/app/a", "value": "1", "lease": null},
//!  "op": "u",
//!  "source": {"connector": "ferry", "kind": "etcd", "name": "etcd://127.0.0.1:2379/app",
//!             "position": 42, "shard": 3, "seq": 17, "snapshot": "false", "ts_ms": 0},
//!  "ts_ms": 1764633600000}
//! ```

use ferry_connect::Rendered;
use ferry_core::Event;
use serde_json::{json, Value};

/// What a record says about where its event came from.
pub struct Origin<'a> {
    pub kind: &'a str,
    pub name: &'a str,
    pub snapshot: bool,
    /// When Ferry published it (read once per batch).
    pub ts_ms: u64,
}

/// Debezium's operation letter.
pub fn op(deleted: bool, snapshot: bool, created: Option<bool>) -> &'static str {
    match (deleted, snapshot, created) {
        (true, _, _) => "d",
        (false, true, _) => "r",
        (false, false, Some(true)) => "c",
        _ => "u",
    }
}

/// The envelope of one event.
pub fn envelope(e: &Event, rendered: Rendered, deleted: bool, origin: &Origin<'_>) -> Value {
    let op = op(deleted, origin.snapshot, rendered.created);
    json!({
        "before": Value::Null,
        "after": if deleted { Value::Null } else { rendered.after.unwrap_or(Value::Null) },
        "op": op,
        "source": {
            "connector": "ferry",
            "kind": origin.kind,
            "name": origin.name,
            "position": e.position.order,
            "shard": e.shard.0,
            "seq": e.seq,
            "snapshot": if origin.snapshot { "true" } else { "false" },
            "ts_ms": e.source_ts_ms,
        },
        "ts_ms": origin.ts_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Op, Position, ShardId, StoreMeta};

    #[test]
    fn ops_follow_debezium() {
        assert_eq!(op(true, true, None), "d");
        assert_eq!(op(false, true, Some(true)), "r");
        assert_eq!(op(false, false, Some(true)), "c");
        assert_eq!(op(false, false, None), "u");
        let e = Event {
            shard: ShardId(3),
            seq: 17,
            position: Position::at(42),
            key: b"/app/a".to_vec(),
            op: Op::Delete {
                meta: StoreMeta::None,
            },
            source_ts_ms: 5,
            capture_ts_ms: 6,
        };
        let r = Rendered {
            key: json!({"key": "/app/a"}),
            after: None,
            created: None,
        };
        let v = envelope(
            &e,
            r,
            true,
            &Origin {
                kind: "etcd",
                name: "etcd://h/app",
                snapshot: false,
                ts_ms: 7,
            },
        );
        assert_eq!(v["op"], "d");
        assert_eq!(v["after"], Value::Null);
        assert_eq!(v["before"], Value::Null);
        assert_eq!(v["source"]["seq"], 17);
        assert_eq!(v["source"]["shard"], 3);
        assert_eq!(v["source"]["position"], 42);
        assert_eq!(v["source"]["snapshot"], "false");
        assert_eq!(v["ts_ms"], 7);
    }
}
