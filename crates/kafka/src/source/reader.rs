//! Verification of a Kafka source: the topic read to the end of every
//! partition, folded into each key's last state (a put's value and lease,
//! or gone after a delete), then served in key order like a store's range.
//! The fold holds every live key in memory: a topic is compared whole, as
//! a store's reader pins one revision.

use super::decode::{Change, Decoder};
use super::malformed;
use crate::connector::partitions;
use crate::tail;
use ferry_connect::async_trait;
use ferry_connect::verify::{KvCursor, KvEntry, KvReader};
use ferry_core::StoreUrl;
use rdkafka::message::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct TopicKv {
    pub name: String,
    pub bootstrap: String,
    pub topic: String,
    /// Each lease's TTL as last captured, filled by a cursor's read.
    pub ttls: Arc<Mutex<HashMap<i64, i64>>>,
}

/// Every key's last state: value, (lease id, TTL).
type Fold = BTreeMap<Vec<u8>, (Vec<u8>, Option<(i64, i64)>)>;

fn fold(name: &str, bootstrap: &str, topic: &str, n: usize) -> Result<(Fold, i64), String> {
    let url = StoreUrl::parse(name).map_err(|e| e.to_string())?;
    let mut state = Fold::new();
    let mut decoder = Decoder::default();
    let mut total = 0;
    for p in 0..n as i32 {
        total += tail::scan(bootstrap, topic, p, Duration::from_secs(600), |m| {
            decoder.set_record_key(m.key());
            match decoder
                .decode(m.payload())
                .map_err(|why| malformed(&url, topic, p, m.offset(), &why))?
            {
                Change::Put {
                    key, value, lease, ..
                } => {
                    state.insert(key, (value, lease));
                }
                Change::Delete { key, .. } => {
                    state.remove(&key);
                }
                Change::Tombstone => {}
            }
            Ok(())
        })?;
    }
    Ok((state, total))
}

struct Cursor {
    reader: (String, String, String),
    pages: Option<std::vec::IntoIter<Vec<KvEntry>>>,
    position: i64,
    ttls: Arc<Mutex<HashMap<i64, i64>>>,
}

#[async_trait]
impl KvCursor for Cursor {
    async fn next_page(&mut self) -> Result<Option<Vec<KvEntry>>, String> {
        if self.pages.is_none() {
            let (name, b, t) = self.reader.clone();
            let n = partitions(&b, &t).await?.unwrap_or(0);
            let (state, total) = tokio::task::spawn_blocking(move || fold(&name, &b, &t, n))
                .await
                .map_err(|e| e.to_string())??;
            self.position = total;
            let mut ttls = self.ttls.lock().expect("ttl lock poisoned");
            for (_, lease) in state.values() {
                if let Some((id, ttl)) = lease {
                    ttls.insert((*id).max(1), *ttl);
                }
            }
            drop(ttls);
            let entries: Vec<KvEntry> = state
                .into_iter()
                .map(|(suffix, (value, lease))| KvEntry {
                    suffix,
                    value,
                    lease: lease.map_or(0, |(id, _)| id.max(1)),
                })
                .collect();
            let pages: Vec<Vec<KvEntry>> = entries.chunks(1000).map(<[KvEntry]>::to_vec).collect();
            self.pages = Some(pages.into_iter());
        }
        Ok(self.pages.as_mut().and_then(Iterator::next))
    }
    fn position(&self) -> i64 {
        self.position
    }
}

#[async_trait]
impl KvReader for TopicKv {
    fn name(&self) -> &str {
        &self.name
    }
    fn cursor(&self) -> Box<dyn KvCursor> {
        Box::new(Cursor {
            reader: (
                self.name.clone(),
                self.bootstrap.clone(),
                self.topic.clone(),
            ),
            pages: None,
            position: 0,
            ttls: Arc::clone(&self.ttls),
        })
    }
    /// No remaining TTL (a topic keeps no clock: what remains of a lease
    /// captured minutes ago is unknown), and as the grant the TTL the
    /// upstream had when it captured the lease: a target key may not
    /// outlive that.
    async fn lease_ttl(&self, lease: i64) -> Result<(i64, i64), String> {
        let ttl = self
            .ttls
            .lock()
            .expect("ttl lock poisoned")
            .get(&lease)
            .copied();
        ttl.map(|t| (0, t))
            .ok_or_else(|| format!("{}: no record of the topic names lease {lease}", self.name))
    }
}
