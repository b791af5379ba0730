//! Every kind of target, behind one type: `Sink` uses `async fn`, so the
//! known set of sinks is an enum rather than a trait object. Sealed values
//! (secrets) are opened here, just before the store's own sink sees them,
//! so no store sink handles the journal key.

use ferry_core::{Event, Op, Seq, ShardId, Value};
use ferry_etcd::EtcdSink;
use ferry_file::pipeline::FileSink;
use ferry_journal::seal::SealKey;
use ferry_replay::{Sink, SinkError};
use ferry_vault::pipeline::VaultSink;
use std::borrow::Cow;
use std::sync::Arc;

pub enum SinkKind {
    Etcd(EtcdSink),
    File(FileSink),
    Vault(VaultSink),
    Mongo(ferry_mongo::MongoSink),
    Cells(crate::cells::CellsSink),
}

pub struct TargetSink {
    kind: SinkKind,
    seal: Arc<SealKey>,
}

impl TargetSink {
    pub fn new(kind: SinkKind, seal: Arc<SealKey>) -> Self {
        TargetSink { kind, seal }
    }

    /// What a target does once every shard applied the source's fence,
    /// before verification: MongoDB builds its unique and TTL indexes
    /// (deferred so a replay can never fail on them midway).
    pub async fn after_fence(&self) -> Result<(), String> {
        match &self.kind {
            SinkKind::Mongo(s) => s.create_deferred_indexes().await.map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }

    /// `events` with every sealed value opened (borrowed when none is sealed).
    fn open<'e>(&self, events: &'e [Event]) -> Result<Cow<'e, [Event]>, SinkError> {
        let sealed = |e: &Event| {
            matches!(
                &e.op,
                Op::Put {
                    value: Value::Sealed { .. },
                    ..
                }
            )
        };
        if !events.iter().any(sealed) {
            return Ok(Cow::Borrowed(events));
        }
        let mut out = events.to_vec();
        for e in out.iter_mut() {
            if let Op::Put { value, .. } = &mut e.op {
                if matches!(value, Value::Sealed { .. }) {
                    let plain = self.seal.open(value).map_err(|err| {
                        SinkError::fatal(format!("shard {} sequence {}: {err}", e.shard, e.seq))
                    })?;
                    *value = Value::Plain(plain);
                }
            }
        }
        Ok(Cow::Owned(out))
    }
}

macro_rules! each {
    ($self:expr, $s:ident => $body:expr) => {
        match &$self.kind {
            SinkKind::Etcd($s) => $body,
            SinkKind::File($s) => $body,
            SinkKind::Vault($s) => $body,
            SinkKind::Mongo($s) => $body,
            SinkKind::Cells($s) => $body,
        }
    };
}

impl Sink for TargetSink {
    fn name(&self) -> &str {
        each!(self, s => s.name())
    }

    async fn startup(&self) -> Result<(), SinkError> {
        each!(self, s => s.startup().await)
    }

    async fn durable_checkpoint(&self, shard: ShardId) -> Result<Option<Seq>, SinkError> {
        each!(self, s => s.durable_checkpoint(shard).await)
    }

    async fn apply(&self, shard: ShardId, events: &[Event]) -> Result<Seq, SinkError> {
        let events = self.open(events)?;
        each!(self, s => s.apply(shard, &events).await)
    }

    async fn shutdown(&self) {
        each!(self, s => s.shutdown().await)
    }
}
