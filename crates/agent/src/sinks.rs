//! Every target's sink behind one type. Sealed values (secrets) are opened
//! here, just before the connector's sink sees them, so no store sink
//! handles the journal key.

use ferry_connect::verify::continuous::RangeVerifier;
use ferry_core::{Event, Op, Seq, ShardId, Value};
use ferry_journal::seal::SealKey;
use ferry_replay::{SharedSink, Sink, SinkError};
use std::borrow::Cow;
use std::sync::Arc;

pub struct TargetSink {
    sink: SharedSink,
    seal: Arc<SealKey>,
    /// The route's continuous verifier for this target: every applied
    /// event's key marks its range dirty, after the write.
    pub verifier: Option<Arc<RangeVerifier>>,
}

impl TargetSink {
    pub fn new(sink: SharedSink, seal: Arc<SealKey>, verifier: Option<Arc<RangeVerifier>>) -> Self {
        TargetSink {
            sink,
            seal,
            verifier,
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

impl Sink for TargetSink {
    fn name(&self) -> &str {
        self.sink.name()
    }

    async fn startup(&self) -> Result<(), SinkError> {
        self.sink.startup().await
    }

    async fn durable_checkpoint(&self, shard: ShardId) -> Result<Option<Seq>, SinkError> {
        self.sink.durable_checkpoint(shard).await
    }

    async fn apply(&self, shard: ShardId, events: &[Event]) -> Result<Seq, SinkError> {
        let events = self.open(events)?;
        let result = self.sink.apply(shard, &events).await;
        if let Some(v) = &self.verifier {
            // Every event handed over may have reached the target, even on
            // an error: all of them dirty their ranges.
            if events
                .iter()
                .any(|e| matches!(e.op, Op::SnapshotBegin { .. } | Op::SnapshotEnd))
            {
                v.invalidate();
            }
            v.touch(
                events
                    .iter()
                    .filter(|e| !e.op.is_marker())
                    .map(|e| e.key.as_slice()),
            );
        }
        result
    }

    async fn shutdown(&self) {
        self.sink.shutdown().await
    }

    async fn after_fence(&self) -> Result<(), SinkError> {
        self.sink.after_fence().await
    }
}
