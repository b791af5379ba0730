//! The streaming half of the tailer: one change-stream session.
//!
//! A reader task owns the driver's change stream and sends what it gets
//! into a bounded channel: each change, and after every `getMore` that came
//! back empty an [`Item::Idle`] with the post-batch resume token and the
//! instant that `getMore` was sent. The tailer's loop then `select!`s over
//! that channel, fence requests, shutdown and its flush timer, all of which
//! are cancel-safe (a driver `getMore` future is not, so it never sits in a
//! `select!`).
//!
//! Pending changes are flushed at `batch_max_events` or `batch_max_wait`,
//! with the last change's (cluster time, resume token) as the checkpoint.
//! An idle stream checkpoints its post-batch resume token every
//! `idle_checkpoint_interval`, so a restart need not re-read old history.

use super::fence::{FenceShared, Fences, WriteAfterFence};
use super::{order_of, Appender, MongoTailer};
use crate::store::unpack;
use crate::{key, MongoError, Namespace};
use ferry_core::{Event, Op, Position, StoreMeta, Value};
use ferry_journal::Journal;
use ferry_lag::{now_ms, LagTracker};
use ferry_replay::Shutdown;
use mongodb::bson::{Bson, Document, RawBson, RawDocumentBuf};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::options::FullDocumentType;
use std::time::Instant;
use tokio::sync::mpsc;

/// How a session ended without an error.
pub(super) enum StreamEnd {
    Shutdown,
    /// A selected collection or database was dropped or renamed.
    Resnapshot(String),
}

enum Item {
    Change(Box<ChangeStreamEvent<RawDocumentBuf>>),
    Idle {
        token: Option<ResumeToken>,
        started: Instant,
    },
    Failed(mongodb::error::Error),
}

/// Events waiting for the next append, per shard, and the position of the
/// last one.
struct Pending {
    per_shard: Vec<Vec<Event>>,
    count: usize,
    since: Option<tokio::time::Instant>,
    last: Option<Position>,
}

/// A resume token as position token bytes (its BSON document).
pub(crate) fn token_bytes(t: &ResumeToken) -> Vec<u8> {
    match mongodb::bson::to_bson(t) {
        Ok(Bson::Document(d)) => mongodb::bson::to_vec(&d).unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn token_from_bytes(b: &[u8]) -> Option<ResumeToken> {
    let d: Document = mongodb::bson::from_slice(b).ok()?;
    mongodb::bson::from_bson(Bson::Document(d)).ok()
}

/// The cluster time inside a resume token, where its format is known:
/// MongoDB's `_data` is a hex KeyString starting with 0x82 and the
/// big-endian timestamp; SecantusDB's is hex BSON with a `t` timestamp.
pub(crate) fn token_time(t: &ResumeToken) -> Option<u64> {
    let Ok(Bson::Document(d)) = mongodb::bson::to_bson(t) else {
        return None;
    };
    let hex = d.get_str("_data").ok()?;
    let bytes = hex::decode(hex).ok()?;
    if let Ok(doc) = RawDocumentBuf::from_bytes(bytes.clone()) {
        if let Ok(Some(mongodb::bson::RawBsonRef::Timestamp(ts))) = doc.get("t") {
            return Some(crate::store::pack(ts));
        }
    }
    if bytes.first() == Some(&0x82) && bytes.len() >= 9 {
        let mut be = [0u8; 8];
        be.copy_from_slice(&bytes[1..9]);
        return Some(u64::from_be_bytes(be));
    }
    None
}

impl MongoTailer {
    /// Follows the change stream from `from` (the journaled checkpoint)
    /// until shutdown, a catalog change, or an error.
    pub(super) async fn stream<J: Journal>(
        &mut self,
        app: &mut Appender<'_, J>,
        lag: &LagTracker,
        from: Position,
        shutdown: &mut Shutdown,
        fences: &mut Fences,
        attempt: &mut u32,
    ) -> Result<StreamEnd, MongoError> {
        let client = self.store.client();
        let mut watch = client
            .watch()
            .full_document(FullDocumentType::UpdateLookup)
            .max_await_time(self.opts.max_await)
            .batch_size(u32::try_from(self.opts.batch_max_events).unwrap_or(1000));
        match token_from_bytes(&from.token).filter(|_| !from.token.is_empty()) {
            Some(t) => watch = watch.resume_after(t),
            None => watch = watch.start_at_operation_time(unpack(from.order)),
        }
        let stream = watch
            .await
            .map_err(|e| self.store.err("opening the change stream", &e))?
            .with_type::<ChangeStreamEvent<RawDocumentBuf>>();
        *attempt = 0;
        let (tx, mut rx) = mpsc::channel::<Item>(2 * self.opts.batch_max_events.max(1));
        let reader = tokio::spawn(async move {
            let mut stream = stream;
            loop {
                let started = Instant::now();
                let item = match stream.next_if_any().await {
                    Ok(Some(ev)) => Item::Change(Box::new(ev)),
                    Ok(None) => Item::Idle {
                        token: stream.resume_token(),
                        started,
                    },
                    Err(e) => Item::Failed(e),
                };
                let failed = matches!(item, Item::Failed(_));
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        let _reader = AbortOnDrop(reader);
        let shared = std::sync::Arc::clone(&self.fence_shared);
        let mut pending = Pending {
            per_shard: app.empty(),
            count: 0,
            since: None,
            last: None,
        };
        let mut seen = from.order;
        let mut last_idle_checkpoint = Instant::now();
        loop {
            let flush_at = pending.since.map(|s| s + self.opts.batch_max_wait);
            tokio::select! {
                biased;
                () = shutdown.wait() => {
                    self.flush(app, &mut pending, fences, &[]).await?;
                    return Ok(StreamEnd::Shutdown);
                }
                item = rx.recv() => {
                    let Some(item) = item else {
                        self.flush(app, &mut pending, fences, &[]).await?;
                        return Err(MongoError::Unreachable { store: self.store.name().to_string(), detail: "the change stream reader stopped".into() });
                    };
                    match item {
                        Item::Failed(e) => {
                            self.flush(app, &mut pending, fences, &[]).await?;
                            return Err(self.store.err("following the change stream", &e));
                        }
                        Item::Change(ev) => {
                            if let Some(why) = self.take_change(*ev, &mut pending, &mut seen, fences, &shared)? {
                                self.flush(app, &mut pending, fences, &[]).await?;
                                return Ok(StreamEnd::Resnapshot(why));
                            }
                            let ready = fences.ready(None, seen);
                            if pending.count >= self.opts.batch_max_events || !ready.is_empty() {
                                self.flush(app, &mut pending, fences, &ready).await?;
                            }
                        }
                        Item::Idle { token, started } => {
                            let time = token.as_ref().and_then(token_time);
                            if let Some(t) = time {
                                lag.source_head(&Position::at(t));
                            }
                            let ready = fences.ready(Some(started), seen);
                            self.flush(app, &mut pending, fences, &ready).await?;
                            if let Some(token) = token {
                                if last_idle_checkpoint.elapsed() >= self.opts.idle_checkpoint_interval {
                                    last_idle_checkpoint = Instant::now();
                                    let order = time.unwrap_or(seen).max(seen);
                                    app.append(app.empty(), Some(Position::with_token(order, token_bytes(&token)))).await?;
                                }
                            }
                        }
                    }
                }
                req = self.fence_rx.recv() => {
                    let Some(req) = req else { continue };
                    tracing::debug!(position = req.position, "fence asked for");
                    fences.add(req, &shared);
                    let ready = fences.ready(None, seen);
                    if !ready.is_empty() {
                        self.flush(app, &mut pending, fences, &ready).await?;
                    }
                }
                () = sleep_until(flush_at), if flush_at.is_some() => {
                    self.flush(app, &mut pending, fences, &[]).await?;
                }
            }
        }
    }

    /// Turns one change into a pending event. `Ok(Some(why))`: the catalog
    /// of a selected namespace changed and a new snapshot is needed.
    fn take_change(
        &self,
        ev: ChangeStreamEvent<RawDocumentBuf>,
        pending: &mut Pending,
        seen: &mut u64,
        fences: &mut Fences,
        shared: &FenceShared,
    ) -> Result<Option<String>, MongoError> {
        let order = order_of(ev.cluster_time).max(*seen);
        *seen = order;
        let Some(ns) = ev.ns.as_ref() else {
            return Ok(None);
        };
        let namespace = Namespace::new(ns.db.clone(), ns.coll.clone().unwrap_or_default());
        let filter = self.store.filter();
        match ev.operation_type {
            OperationType::Drop | OperationType::Rename => {
                return Ok(filter.selects(&namespace).then(|| {
                    format!("collection {namespace} was dropped or renamed at the source")
                }));
            }
            OperationType::DropDatabase => {
                return Ok(filter
                    .may_select_db(&namespace.db)
                    .then(|| format!("database {} was dropped at the source", namespace.db)));
            }
            OperationType::Invalidate => {
                return Ok(Some("the source invalidated the change stream".into()));
            }
            _ => {}
        }
        if !filter.selects(&namespace) {
            return Ok(None);
        }
        let Some(id) = ev.document_key.as_ref().and_then(|d| d.get("_id")) else {
            return Ok(None);
        };
        let id = RawBson::try_from(id.clone()).map_err(|e| MongoError::Server {
            store: self.store.name().to_string(),
            action: "reading a change".into(),
            detail: format!("an _id the driver cannot encode ({e})"),
            kind: ferry_core::ErrorKind::Permanent,
        })?;
        let k = key::encode(&namespace, id.as_raw_bson_ref());
        let meta = StoreMeta::Mongo {
            db: namespace.db.clone(),
            collection: namespace.coll.clone(),
        };
        let op = match ev.operation_type {
            OperationType::Insert | OperationType::Replace | OperationType::Update => {
                match ev.full_document {
                    Some(doc) => Op::Put {
                        value: Value::Plain(doc.into_bytes()),
                        meta,
                    },
                    // Looked up after a later delete: that delete follows.
                    None => return Ok(None),
                }
            }
            OperationType::Delete => Op::Delete { meta },
            _ => return Ok(None),
        };
        let mut id_doc = RawDocumentBuf::new();
        id_doc.append("_id", id);
        let w = WriteAfterFence {
            namespace: namespace.to_string(),
            id: key::id_text(&id_doc),
            position: order,
        };
        shared.observe(&w);
        fences.remember(w);
        let shard = self.span.shard_for(&k);
        let position = Position::with_token(order, token_bytes(&ev.id));
        pending.per_shard[(shard.0 - self.span.first) as usize].push(Event {
            shard,
            seq: 0,
            position: position.clone(),
            key: k,
            op,
            source_ts_ms: ev
                .wall_time
                .map_or(0, |t| u64::try_from(t.timestamp_millis()).unwrap_or(0)),
            capture_ts_ms: now_ms(),
        });
        pending.last = Some(position);
        pending.count += 1;
        pending.since.get_or_insert_with(tokio::time::Instant::now);
        Ok(None)
    }

    /// Appends everything pending, fence markers for `ready`, and the
    /// checkpoint at the last change, in one atomic append.
    async fn flush<J: Journal>(
        &self,
        app: &mut Appender<'_, J>,
        pending: &mut Pending,
        fences: &mut Fences,
        ready: &[u64],
    ) -> Result<(), MongoError> {
        if pending.count == 0 && ready.is_empty() {
            return Ok(());
        }
        let mut per_shard = std::mem::replace(&mut pending.per_shard, app.empty());
        let now = now_ms();
        for &f in ready {
            for (i, events) in per_shard.iter_mut().enumerate() {
                // After every change at or below F, before any above it.
                let at = events.partition_point(|e| e.position.order <= f);
                events.insert(
                    at,
                    Event {
                        shard: ferry_core::ShardId(self.span.first + i as u32),
                        seq: 0,
                        position: Position::at(f),
                        key: Vec::new(),
                        op: Op::Fence,
                        source_ts_ms: 0,
                        capture_ts_ms: now,
                    },
                );
            }
        }
        if let Some(limiter) = &self.opts.rate_limit {
            ferry_replay::throttle(limiter, pending.count).await;
        }
        let result = app.append(per_shard, pending.last.take()).await;
        pending.count = 0;
        pending.since = None;
        if !ready.is_empty() {
            tracing::debug!(?ready, ok = result.is_ok(), "fence journaled");
            fences.complete(ready, &result.clone());
        }
        result
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn token_times() {
        // MongoDB: KeyString, 0x82 then the big-endian timestamp.
        let t: ResumeToken = mongodb::bson::from_bson(Bson::Document(
            doc! {"_data": "826B02CC24000000012B022C0100296E5A1004"},
        ))
        .unwrap();
        assert_eq!(token_time(&t), Some((0x6B02_CC24u64 << 32) | 1));
        // SecantusDB: hex BSON {s: int32, t: Timestamp, …}.
        let s: ResumeToken = mongodb::bson::from_bson(Bson::Document(doc! {"_data":
            "33000000107300050000001174000a00000024cc026b026e0004000000742e6100036b000e000000105f696400010000000000"}))
        .unwrap();
        assert_eq!(token_time(&s), Some((1_795_345_444u64 << 32) | 10));
        let b = token_bytes(&s);
        assert_eq!(token_from_bytes(&b), Some(s));
    }
}
