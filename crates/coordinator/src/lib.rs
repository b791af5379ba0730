//! Agents sharing one migration, coordinated on etcd:
//! `--coordinator etcd://host:port[,host:port]/ferry/<migration>`.
//!
//! Nothing here is a membership protocol of Ferry's own; it is etcd's
//! primitives, used as their authors intend:
//!
//! - **Membership is a lease.** Each agent grants one (TTL `ttl`), keeps it
//!   alive, and puts `<prefix>/agents/<id>` under it. An agent that dies
//!   or stops answering loses the lease within the TTL and its keys go
//!   with it. [`Coordinator::lost`] tells the agent itself that its lease
//!   is gone, so it stops acting on what the lease gave it.
//! - **The tailer leader is etcd's election** on `<prefix>/leader`
//!   (`campaign`). The leader key's creation revision is the leader's
//!   epoch: etcd revisions only grow, so a later leader always has a higher
//!   epoch, and the journal refuses appends of a lower one.
//! - **A shard has one owner**: `<prefix>/shards/<n>` created in a
//!   transaction only when absent, under the owner's lease. Which agent
//!   should own which shard is a pure function of the live agents
//!   ([`share`]); an agent claims the shards of its share that nobody
//!   holds and releases those it holds outside its share, so shards move
//!   when agents come and go, one owner at a time.

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;

/// `etcd://host:port[,host:port]/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorUrl {
    pub endpoints: Vec<String>,
    /// Without leading or trailing `/`.
    pub prefix: String,
}

impl CoordinatorUrl {
    pub fn parse(s: &str) -> Result<CoordinatorUrl, String> {
        let usage = "give it as etcd://host:port[,host:port]/ferry/<migration>";
        let rest = s
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("the coordinator URL {s} is not an etcd:// URL; {usage}"))?;
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("http://{h}"))
            .collect();
        if endpoints.is_empty() || prefix.is_empty() {
            return Err(format!(
                "the coordinator URL {s} needs hosts and a prefix naming the migration; {usage}"
            ));
        }
        Ok(CoordinatorUrl {
            endpoints,
            prefix: prefix.into(),
        })
    }
}

/// What an agent says of itself under `<prefix>/agents/<id>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentInfo {
    pub id: String,
    /// Its control API, `https://host:port`.
    pub api: String,
    pub pid: u32,
}

/// Which of `shards` the agent `me` should own among `agents`: the shards
/// dealt in turn to the agents in id order.
pub fn share(agents: &[String], shards: &[u32], me: &str) -> Vec<u32> {
    let mut ids: Vec<&String> = agents.iter().collect();
    ids.sort();
    ids.dedup();
    let Some(i) = ids.iter().position(|a| *a == me) else {
        return Vec::new();
    };
    shards
        .iter()
        .enumerate()
        .filter(|(k, _)| k % ids.len() == i)
        .map(|(_, s)| *s)
        .collect()
}

/// One agent's membership of a migration.
pub struct Coordinator {
    client: Client,
    prefix: String,
    info: AgentInfo,
    lease: i64,
    lost: watch::Receiver<bool>,
    keepalive: tokio::task::JoinHandle<()>,
    /// The election key while this agent leads: it exists only as long as
    /// this agent's lease, so writes made on its condition
    /// ([`Coordinator::put_as_leader`]) are refused once another leads.
    leader_key: std::sync::Mutex<Option<Vec<u8>>>,
}

/// Bounds one etcd call.
async fn op<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(10), f).await {
        Ok(r) => r.map_err(|e| err(what, e)),
        Err(_) => Err(err(what, "no answer within 10 s")),
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!(
        "the coordinator (etcd) failed {what}: {e}; check that etcd runs at the --coordinator URL"
    )
}

impl Coordinator {
    /// Joins the migration: a lease of `ttl`, kept alive, and the agent's
    /// key under it.
    pub async fn join(
        url: &CoordinatorUrl,
        info: AgentInfo,
        ttl: Duration,
    ) -> Result<Coordinator, String> {
        // No per-request timeout on the client: a campaign waits as long as
        // another agent leads. Other calls are bounded by `op`.
        let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
        let mut client = tokio::time::timeout(
            Duration::from_secs(15),
            Client::connect(url.endpoints.clone(), Some(opts)),
        )
        .await
        .map_err(|_| err("to connect", "timed out"))?
        .map_err(|e| err("to connect", e))?;
        let ttl_s = ttl.as_secs().max(2) as i64;
        let lease = op("granting a lease", client.lease_grant(ttl_s, None))
            .await?
            .id();
        let (mut keeper, mut stream) =
            op("keeping the lease", client.lease_keep_alive(lease)).await?;
        let (tx, lost) = watch::channel(false);
        let every = Duration::from_millis((ttl_s as u64 * 1000) / 3);
        let keepalive = tokio::spawn(async move {
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let alive = async {
                    keeper.keep_alive().await.ok()?;
                    let r = tokio::time::timeout(every, stream.message()).await.ok()?;
                    r.ok().flatten().filter(|r| r.ttl() > 0)
                }
                .await;
                match alive {
                    Some(_) => last_ok = tokio::time::Instant::now(),
                    None if last_ok.elapsed() >= Duration::from_secs(ttl_s as u64) => {
                        let _ = tx.send(true);
                        return;
                    }
                    None => {}
                }
                if last_ok.elapsed() >= Duration::from_secs(ttl_s as u64) {
                    // A pause longer than the TTL (SIGSTOP, a stalled VM):
                    // the lease may be gone even if etcd now answers.
                    let _ = tx.send(true);
                    return;
                }
            }
        });
        let c = Coordinator {
            client,
            prefix: url.prefix.clone(),
            info,
            lease,
            lost,
            keepalive,
            leader_key: std::sync::Mutex::new(None),
        };
        let value = serde_json::to_vec(&c.info).map_err(|e| e.to_string())?;
        op(
            "registering the agent",
            c.client.clone().put(
                c.key(&format!("agents/{}", c.info.id)),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        Ok(c)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    pub fn agent(&self) -> &str {
        &self.info.id
    }

    /// Becomes `true` once this agent's lease is gone: whatever it holds
    /// (leadership, shards) is someone else's now.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Waits until this agent is the tailer leader; returns its epoch.
    pub async fn campaign(&self) -> Result<u64, String> {
        let r = self
            .client
            .clone()
            .campaign(self.key("leader"), self.info.id.clone(), self.lease)
            .await
            .map_err(|e| err("campaigning for the tailer leader", e))?;
        let leader = r
            .leader()
            .ok_or_else(|| err("campaigning", "no leader key in the answer"))?;
        *self.leader_key.lock().expect("leader key lock") = Some(leader.key().to_vec());
        Ok(leader.rev() as u64)
    }

    /// The tailer leader's agent id, if there is one.
    pub async fn leader(&self) -> Result<Option<String>, String> {
        let mut c = self.client.clone();
        match tokio::time::timeout(Duration::from_secs(10), c.leader(self.key("leader"))).await {
            Ok(Ok(r)) => Ok(r
                .kv()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
            // etcd answers "election: no leader" as an error.
            Ok(Err(e)) if e.to_string().contains("no leader") => Ok(None),
            Ok(Err(e)) => Err(err("reading the leader", e)),
            Err(_) => Err(err("reading the leader", "no answer within 10 s")),
        }
    }

    /// The live agents.
    pub async fn agents(&self) -> Result<Vec<AgentInfo>, String> {
        let mut c = self.client.clone();
        let r = op(
            "listing the agents",
            c.get(self.key("agents/"), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    /// Shard → owning agent.
    pub async fn owners(&self) -> Result<BTreeMap<u32, String>, String> {
        Ok(self
            .list("shards/")
            .await?
            .into_iter()
            .filter_map(|(shard, agent)| {
                Some((
                    shard.parse().ok()?,
                    String::from_utf8_lossy(&agent).into_owned(),
                ))
            })
            .collect())
    }

    /// Takes `shard` if nobody holds it; whether this agent holds it now.
    pub async fn claim(&self, shard: u32) -> Result<bool, String> {
        let key = self.key(&format!("shards/{shard}"));
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.info.id.clone(),
                Some(PutOptions::new().with_lease(self.lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let mut c = self.client.clone();
        let r = op("claiming a shard", c.txn(txn)).await?;
        if r.succeeded() {
            return Ok(true);
        }
        let holder = r.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        Ok(holder.as_deref() == Some(self.info.id.as_bytes()))
    }

    /// Gives `shard` up, if this agent holds it.
    pub async fn release(&self, shard: u32) -> Result<(), String> {
        let key = self.key(&format!("shards/{shard}"));
        let txn = Txn::new()
            .when([Compare::value(
                key.clone(),
                CompareOp::Equal,
                self.info.id.clone(),
            )])
            .and_then([TxnOp::delete(key, None)]);
        let mut c = self.client.clone();
        op("releasing a shard", c.txn(txn)).await?;
        Ok(())
    }

    /// Puts `value` at `<prefix>/<rest>` (no lease: it outlives the agent).
    pub async fn put(&self, rest: &str, value: Vec<u8>) -> Result<(), String> {
        let mut c = self.client.clone();
        op("writing", c.put(self.key(rest), value, None)).await?;
        Ok(())
    }

    /// Puts `value` at `<prefix>/<rest>` only while this agent leads (its
    /// election key still exists); whether it was written.
    pub async fn put_as_leader(&self, rest: &str, value: Vec<u8>) -> Result<bool, String> {
        let Some(leader) = self.leader_key.lock().expect("leader key lock").clone() else {
            return Ok(false);
        };
        let txn = Txn::new()
            .when([Compare::create_revision(leader, CompareOp::Greater, 0)])
            .and_then([TxnOp::put(self.key(rest), value, None)]);
        let mut c = self.client.clone();
        Ok(op("writing as the leader", c.txn(txn)).await?.succeeded())
    }

    /// Puts `value` at `<prefix>/<rest>` only if nothing is there; whether
    /// it was written.
    pub async fn put_new(&self, rest: &str, value: Vec<u8>) -> Result<bool, String> {
        let key = self.key(rest);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let mut c = self.client.clone();
        Ok(op("writing", c.txn(txn)).await?.succeeded())
    }

    /// Deletes `<prefix>/<rest>` if it still holds `value`.
    pub async fn delete_if(&self, rest: &str, value: Vec<u8>) -> Result<(), String> {
        let key = self.key(rest);
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, value)])
            .and_then([TxnOp::delete(key, None)]);
        let mut c = self.client.clone();
        op("deleting", c.txn(txn)).await?;
        Ok(())
    }

    /// Every key under `<prefix>/<rest>`, with the part after it, and its value.
    pub async fn list(&self, rest: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        let base = self.key(rest);
        let mut c = self.client.clone();
        let r = op(
            "listing",
            c.get(base.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| {
                let k = kv.key_str().ok()?.strip_prefix(&base)?.to_string();
                Some((k, kv.value().to_vec()))
            })
            .collect())
    }

    /// The value at `<prefix>/<rest>`.
    pub async fn get(&self, rest: &str) -> Result<Option<Vec<u8>>, String> {
        let mut c = self.client.clone();
        let r = op("reading", c.get(self.key(rest), None)).await?;
        Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_dealt_in_turn_to_the_agents_in_id_order() {
        let agents = vec!["b".to_string(), "a".into(), "c".into()];
        let shards: Vec<u32> = (0..8).collect();
        assert_eq!(share(&agents, &shards, "a"), vec![0, 3, 6]);
        assert_eq!(share(&agents, &shards, "b"), vec![1, 4, 7]);
        assert_eq!(share(&agents, &shards, "c"), vec![2, 5]);
        assert_eq!(share(&agents, &shards, "d"), Vec::<u32>::new());
        let mut all: Vec<u32> = ["a", "b", "c"]
            .iter()
            .flat_map(|a| share(&agents, &shards, a))
            .collect();
        all.sort();
        assert_eq!(all, shards, "every shard has exactly one agent");
    }

    #[test]
    fn a_coordinator_url_names_hosts_and_a_prefix() {
        let u = CoordinatorUrl::parse("etcd://127.0.0.1:2379,127.0.0.1:2380/ferry/m1/").unwrap();
        assert_eq!(u.endpoints.len(), 2);
        assert_eq!(u.prefix, "ferry/m1");
        for bad in ["etcd://127.0.0.1:2379", "kafka://h/x", "etcd:///x"] {
            assert!(CoordinatorUrl::parse(bad)
                .unwrap_err()
                .contains("etcd://host:port"));
        }
    }
}
