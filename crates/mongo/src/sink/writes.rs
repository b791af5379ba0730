//! One batch's writes, collapsed per document and split into commands
//! within the server's limits.
//!
//! Within a batch only the last operation on a document matters (the
//! batch is applied atomically, or re-applied whole), so operations are
//! collapsed per key: one replace or one delete per `_id`. After that no
//! two operations touch the same document, so the commands of different
//! namespaces and kinds may run in any order.
//!
//! Each command is one BSON document (the driver's `runCommand`), so it is
//! kept under the server's command limit: `maxBsonObjectSize` + 16 KiB
//! (within the 48 MB message limit) and under `maxWriteBatchSize`
//! operations.

use crate::{key, MongoError, Namespace};
use ferry_core::{Event, Op, Value};
use mongodb::bson::{rawdoc, RawArrayBuf, RawDocumentBuf};
use std::collections::{BTreeMap, HashMap};

/// Room the server gives a command beyond the largest document.
const COMMAND_SLACK_BYTES: usize = 16 * 1024;
/// Bytes of command framing besides the statements (name, flags, session).
const COMMAND_OVERHEAD_BYTES: usize = 1024;

pub(crate) enum DocOp {
    /// Replace (upsert) with this document; `snapshot`: from the copy.
    Put {
        doc: RawDocumentBuf,
        snapshot: bool,
    },
    Delete,
}

/// One namespace's writes: keys in first-seen order, and per key the
/// `{_id}` filter and the last operation.
type NsWrites = (Vec<Vec<u8>>, HashMap<Vec<u8>, (RawDocumentBuf, DocOp)>);

/// The collapsed writes of one batch, per namespace.
#[derive(Default)]
pub(crate) struct Writes {
    /// namespace → (key → (filter `{_id}`, op)); insertion order kept per
    /// namespace only for stable commands.
    by_ns: BTreeMap<Namespace, NsWrites>,
    pub count: usize,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The namespaces with at least one put: the collections these writes
    /// may create (a delete never creates one).
    pub fn put_namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.by_ns
            .iter()
            .filter(|(_, (_, m))| m.values().any(|(_, op)| matches!(op, DocOp::Put { .. })))
            .map(|(ns, _)| ns)
    }

    /// True when every write is a put from the copy (an insert may do).
    pub fn all_snapshot_puts(&self) -> bool {
        self.by_ns.values().all(|(_, m)| {
            m.values()
                .all(|(_, op)| matches!(op, DocOp::Put { snapshot: true, .. }))
        })
    }

    /// Adds a data event. `limit`: the target's largest document.
    pub fn push(&mut self, e: &Event, limit: usize, store: &str) -> Result<(), MongoError> {
        let (ns, filter) = key::decode(&e.key).map_err(|why| MongoError::Server {
            store: store.to_string(),
            action: format!("applying shard {} sequence {}", e.shard, e.seq),
            detail: why,
            kind: ferry_core::ErrorKind::Fatal,
        })?;
        let op = match &e.op {
            Op::Put { value, .. } => {
                let Value::Plain(bytes) = value else {
                    return Err(MongoError::Server {
                        store: store.to_string(),
                        action: "applying a batch".into(),
                        detail:
                            "a sealed value reached the sink; values must be opened before replay"
                                .into(),
                        kind: ferry_core::ErrorKind::Fatal,
                    });
                };
                if bytes.len() > limit {
                    return Err(MongoError::DocumentTooLarge {
                        store: store.to_string(),
                        namespace: ns.to_string(),
                        id: key::id_text(&filter),
                        bytes: bytes.len(),
                        limit,
                    });
                }
                let doc = RawDocumentBuf::from_bytes(bytes.clone()).map_err(|err| {
                    MongoError::Server {
                        store: store.to_string(),
                        action: format!("applying {ns} _id {}", key::id_text(&filter)),
                        detail: format!("the journaled document is not valid BSON ({err})"),
                        kind: ferry_core::ErrorKind::Permanent,
                    }
                })?;
                DocOp::Put {
                    doc,
                    snapshot: e.position.token.is_empty(),
                }
            }
            _ => DocOp::Delete,
        };
        let (order, map) = self.by_ns.entry(ns).or_default();
        if map.insert(e.key.clone(), (filter, op)).is_none() {
            order.push(e.key.clone());
            self.count += 1;
        }
        Ok(())
    }

    /// The commands to run: (namespace, command document), each within
    /// `max_doc + 16 KiB` bytes and `max_ops` statements. `as_inserts`:
    /// puts become `insert` statements (only when
    /// [`Writes::all_snapshot_puts`]).
    pub fn commands(
        &self,
        max_doc: usize,
        max_ops: usize,
        as_inserts: bool,
    ) -> Vec<(Namespace, RawDocumentBuf)> {
        let budget = max_doc + COMMAND_SLACK_BYTES - COMMAND_OVERHEAD_BYTES;
        let mut out = Vec::new();
        for (ns, (order, map)) in &self.by_ns {
            let mut puts = Chunker::new(budget, max_ops);
            let mut dels = Chunker::new(budget, max_ops);
            for k in order {
                let (filter, op) = &map[k];
                match op {
                    DocOp::Put { doc, .. } if as_inserts => puts.push(doc.clone()),
                    DocOp::Put { doc, .. } => {
                        puts.push(rawdoc! {"q": filter.clone(), "u": doc.clone(), "upsert": true})
                    }
                    DocOp::Delete => dels.push(rawdoc! {"q": filter.clone(), "limit": 1}),
                }
            }
            let (verb, field) = if as_inserts {
                ("insert", "documents")
            } else {
                ("update", "updates")
            };
            for chunk in puts.finish() {
                let mut cmd = rawdoc! {verb: ns.coll.as_str()};
                cmd.append(field, chunk);
                cmd.append("ordered", true);
                out.push((ns.clone(), cmd));
            }
            for chunk in dels.finish() {
                let mut cmd = rawdoc! {"delete": ns.coll.as_str()};
                cmd.append("deletes", chunk);
                cmd.append("ordered", true);
                out.push((ns.clone(), cmd));
            }
        }
        out
    }
}

/// Packs statements into arrays within a byte and count budget.
struct Chunker {
    budget: usize,
    max_ops: usize,
    done: Vec<RawArrayBuf>,
    cur: RawArrayBuf,
    bytes: usize,
    n: usize,
}

impl Chunker {
    fn new(budget: usize, max_ops: usize) -> Self {
        Chunker {
            budget,
            max_ops: max_ops.max(1),
            done: Vec::new(),
            cur: RawArrayBuf::new(),
            bytes: 0,
            n: 0,
        }
    }

    fn push(&mut self, stmt: RawDocumentBuf) {
        // Array element overhead: type byte, decimal index, NUL.
        let size = stmt.as_bytes().len() + 8;
        if self.n > 0 && (self.bytes + size > self.budget || self.n >= self.max_ops) {
            self.done.push(std::mem::take(&mut self.cur));
            self.bytes = 0;
            self.n = 0;
        }
        self.cur.push(stmt);
        self.bytes += size;
        self.n += 1;
    }

    fn finish(mut self) -> Vec<RawArrayBuf> {
        if self.n > 0 {
            self.done.push(self.cur);
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Position, ShardId, StoreMeta};
    use mongodb::bson::RawBsonRef;

    fn put(id: i32, v: &str, snapshot: bool) -> Event {
        let ns = Namespace::new("d", "c");
        Event {
            shard: ShardId(0),
            seq: 1,
            position: if snapshot {
                Position::at(1)
            } else {
                Position::with_token(1, vec![1])
            },
            key: key::encode(&ns, RawBsonRef::Int32(id)),
            op: Op::Put {
                value: Value::Plain(rawdoc! {"_id": id, "v": v}.into_bytes()),
                meta: StoreMeta::None,
            },
            source_ts_ms: 0,
            capture_ts_ms: 0,
        }
    }

    #[test]
    fn collapses_and_splits() {
        let mut w = Writes::default();
        for i in 0..10 {
            w.push(&put(i, "a", true), 1 << 20, "s").unwrap();
        }
        assert!(w.all_snapshot_puts());
        w.push(&put(3, "b", false), 1 << 20, "s").unwrap();
        assert_eq!(w.count, 10);
        assert!(!w.all_snapshot_puts());
        // 4 statements per command at most: 3 commands.
        let cmds = w.commands(1 << 20, 4, false);
        assert_eq!(cmds.len(), 3);
        assert!(cmds[0].1.get_str("update").is_ok());
        // The byte budget (document limit 0 + 16 KiB slack) splits 5 KB
        // documents three to a command at most.
        let mut w = Writes::default();
        for i in 0..10 {
            w.push(&put(i, &"y".repeat(5000), true), 1 << 20, "s")
                .unwrap();
        }
        let cmds = w.commands(0, 1000, true);
        assert!(cmds.len() >= 4, "{}", cmds.len());
        assert!(cmds[0].1.get_str("insert").is_ok());
        let big = put(1, &"x".repeat(100), true);
        assert!(matches!(
            Writes::default().push(&big, 50, "s"),
            Err(MongoError::DocumentTooLarge { .. })
        ));
    }
}
