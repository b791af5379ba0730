//! Every kind of target, behind one type: `Sink` uses `async fn`, so the
//! known set of sinks is an enum rather than a trait object.

use ferry_core::{Event, Seq, ShardId};
use ferry_etcd::EtcdSink;
use ferry_replay::{Sink, SinkError};

pub enum TargetSink {
    Etcd(EtcdSink),
}

impl Sink for TargetSink {
    fn name(&self) -> &str {
        match self {
            TargetSink::Etcd(s) => s.name(),
        }
    }

    async fn startup(&self) -> Result<(), SinkError> {
        match self {
            TargetSink::Etcd(s) => s.startup().await,
        }
    }

    async fn durable_checkpoint(&self, shard: ShardId) -> Result<Option<Seq>, SinkError> {
        match self {
            TargetSink::Etcd(s) => s.durable_checkpoint(shard).await,
        }
    }

    async fn apply(&self, shard: ShardId, events: &[Event]) -> Result<Seq, SinkError> {
        match self {
            TargetSink::Etcd(s) => s.apply(shard, events).await,
        }
    }

    async fn shutdown(&self) {
        match self {
            TargetSink::Etcd(s) => s.shutdown().await,
        }
    }
}
