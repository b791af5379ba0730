//! A connection to one etcd URL, its prefix, and the pre-checks.
//!
//! Invariants:
//! - [`EtcdStore::connect`] returns only after the server answered (a
//!   status call), so "unreachable" and "wrong password" are told apart
//!   before anything else runs.
//! - Every unary request is bounded in time ([`REQUEST_TIMEOUT`]); watches
//!   are not (they are long-lived by design) and rely on HTTP/2 keep-alive
//!   pings to notice a dead connection.
//! - Range reads go page by page ([`RangeCursor`]) at one pinned revision,
//!   with page sizes adapted to the values' size, so memory stays bounded
//!   whatever the prefix holds.

use crate::error::{classify, is_auth_not_enabled, is_response_too_large};
use crate::{is_reserved, EtcdError, RESERVED_PREFIX};
use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue, KvClient};
use ferry_core::StoreUrl;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long connecting may take before the store counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one unary request may take: etcd answers in milliseconds, or
/// within an election (~1 s) after a leader change; longer means trouble.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest gRPC response accepted. Go's clientv3 accepts up to 2 GiB; pages
/// and watch batches are far below this, but a watch catching up may batch
/// up to 1000 revisions in one response, so the 4 MiB tonic default is too
/// small.
pub(crate) const MAX_DECODING_BYTES: usize = 256 << 20;
/// Aim for range pages of about this many bytes.
const PAGE_TARGET_BYTES: usize = 4 << 20;
/// Never ask for more keys than this in one page.
pub(crate) const PAGE_MAX_KEYS: i64 = 5000;

/// The largest value found under a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LargestValue {
    pub key: Vec<u8>,
    pub value_bytes: usize,
}

/// A connected etcd and the prefix a URL names. Cheap to clone (one `Arc`,
/// which also keeps every future holding a store small).
#[derive(Clone)]
pub struct EtcdStore(Arc<Inner>);

struct Inner {
    client: Client,
    kv: KvClient,
    name: Arc<str>,
    prefix: Arc<[u8]>,
    endpoints: Arc<[String]>,
    /// `Some(true)`: credentials were given and the server accepted them
    /// (so auth is on); `Some(false)`: the server said auth is off; `None`:
    /// no credentials were given.
    auth_seen: Option<bool>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdStore({})", self.0.name)
    }
}

impl EtcdStore {
    /// Connects to the etcd `url` names and checks that it answers.
    pub async fn connect(url: &StoreUrl) -> Result<EtcdStore, EtcdError> {
        let name = url.to_string();
        let StoreUrl::Etcd {
            tls,
            endpoints,
            prefix,
            user,
            params,
            ..
        } = url
        else {
            return Err(EtcdError::Config {
                store: name,
                reason: "it is not an etcd:// or etcd+tls:// URL".into(),
            });
        };
        let scheme = if *tls { "https" } else { "http" };
        let eps: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            // Pings notice a silently dead connection under a long watch.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if *tls {
            opts = opts.with_tls(tls_options(&name, params)?);
        }
        let creds = user.clone().zip(url.secret().map(str::to_string));
        let mut auth_seen = None;
        let client = match creds {
            Some((u, p)) => {
                // Simple tokens expire after 5 idle minutes; refresh them.
                let with_user = opts.clone().with_user(u, p).with_auto_token_refresh(true);
                match connect_timed(&name, &eps, with_user).await? {
                    Ok(c) => {
                        auth_seen = Some(true);
                        c
                    }
                    Err(e) if is_auth_not_enabled(&e) => {
                        tracing::info!(store = %name, "etcd has authentication disabled; the credentials in the URL are not used");
                        auth_seen = Some(false);
                        connect_timed(&name, &eps, opts)
                            .await?
                            .map_err(|e| classify(&name, "connecting", &e))?
                    }
                    Err(e) => return Err(classify(&name, "connecting", &e)),
                }
            }
            None => connect_timed(&name, &eps, opts)
                .await?
                .map_err(|e| classify(&name, "connecting", &e))?,
        };
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_DECODING_BYTES);
        let store = EtcdStore(Arc::new(Inner {
            client,
            kv,
            name: name.into(),
            prefix: prefix.as_bytes().into(),
            endpoints: endpoints.iter().map(ToString::to_string).collect(),
            auth_seen,
        }));
        // A lazily connecting channel says nothing until the first call.
        store.server_version().await?;
        Ok(store)
    }

    /// The redacted URL: how every message names this store.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The key prefix this URL covers (bytes, see the crate doc).
    pub fn prefix(&self) -> &[u8] {
        &self.0.prefix
    }

    /// The underlying client, for callers that need an RPC this type does
    /// not wrap (tests, tools).
    pub fn client(&self) -> Client {
        self.0.client.clone()
    }

    pub(crate) fn kv(&self) -> KvClient {
        self.0.kv.clone()
    }

    /// True when both name the same endpoints and one prefix covers the
    /// other: copying would feed Ferry's own writes back to its tailer.
    pub fn overlaps(&self, other: &EtcdStore) -> bool {
        let same_cluster = self
            .0
            .endpoints
            .iter()
            .any(|e| other.0.endpoints.contains(e));
        same_cluster
            && (self.0.prefix.starts_with(&other.0.prefix)
                || other.0.prefix.starts_with(&self.0.prefix))
    }

    /// Runs one unary request with [`REQUEST_TIMEOUT`], giving the raw error.
    /// The request future is boxed: tonic's are several KiB each, and
    /// callers' futures would otherwise carry every one of them.
    pub(crate) async fn timed_raw<T>(
        &self,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, etcd_client::Error> {
        match tokio::time::timeout(REQUEST_TIMEOUT, Box::pin(fut)).await {
            Ok(r) => r,
            Err(_) => Err(etcd_client::Error::Internal(format!(
                "no answer within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Runs one unary request with [`REQUEST_TIMEOUT`] and classifies errors.
    pub(crate) async fn timed<T>(
        &self,
        action: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        self.timed_raw(fut)
            .await
            .map_err(|e| classify(&self.0.name, action, &e))
    }

    /// The server's version, e.g. `3.4.23`.
    pub async fn server_version(&self) -> Result<String, EtcdError> {
        let mut m = self.0.client.maintenance_client();
        let r = self.timed("reading the server status", m.status()).await?;
        Ok(r.version().to_string())
    }

    /// The newest revision of the whole keyspace.
    pub async fn head_revision(&self) -> Result<i64, EtcdError> {
        let mut kv = self.kv();
        let opts = GetOptions::new().with_count_only();
        let r = self
            .timed(
                "reading the head revision",
                kv.get(RESERVED_PREFIX, Some(opts)),
            )
            .await?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// How many keys the prefix holds now (Ferry's reserved keys excluded).
    pub async fn count_prefix(&self) -> Result<u64, EtcdError> {
        Ok(self.count_at(0).await?.1)
    }

    /// (header revision, key count) of the prefix at `revision` (0: now),
    /// without Ferry's reserved keys.
    pub(crate) async fn count_at(&self, revision: i64) -> Result<(i64, u64), EtcdError> {
        let (start, end) = prefix_range(&self.0.prefix);
        let mut kv = self.kv();
        let opts = GetOptions::new()
            .with_range(end)
            .with_count_only()
            .with_revision(revision);
        let r = self
            .timed("counting the keys", kv.get(start, Some(opts)))
            .await?;
        // The header carries the current revision, not the one read at.
        let rev = if revision > 0 {
            revision
        } else {
            r.header().map_or(0, |h| h.revision())
        };
        let mut count = u64::try_from(r.count()).unwrap_or(0);
        if range_covers_reserved(&self.0.prefix) {
            let (rs, re) = prefix_range(RESERVED_PREFIX);
            let opts = GetOptions::new()
                .with_range(re)
                .with_count_only()
                .with_revision(rev);
            let r = self
                .timed("counting the keys", kv.get(rs, Some(opts)))
                .await?;
            count = count.saturating_sub(u64::try_from(r.count()).unwrap_or(0));
        }
        Ok((rev, count))
    }

    /// Whether the prefix holds the same state at revision `to` as at `from`
    /// (`from < to`), up to keys created and deleted again in between
    /// (which change nothing a copy must have): no key under it was
    /// modified in `(from, to]` and its key count is the same.
    ///
    /// Costs a read of the whole prefix on the server (etcd applies a
    /// mod-revision filter after reading the range), so callers throttle it.
    pub(crate) async fn unchanged_between(&self, from: i64, to: i64) -> Result<bool, EtcdError> {
        if self.count_at(from).await?.1 != self.count_at(to).await?.1 {
            return Ok(false);
        }
        let (start, end) = prefix_range(&self.0.prefix);
        let opts = GetOptions::new()
            .with_range(end)
            .with_revision(to)
            .with_min_mod_revision(from + 1)
            .with_keys_only()
            .with_limit(64);
        let mut kv = self.kv();
        let r = self
            .timed("checking for changes", kv.get(start, Some(opts)))
            .await?;
        // Reserved keys (when the prefix covers them) do not count; if a
        // full page of them hides the rest, say "changed": it is only safe.
        Ok(!r.more() && r.kvs().iter().all(|kv| is_reserved(kv.key())))
    }

    /// Whether the server has authentication enabled. etcd 3.4 has no
    /// AuthStatus call; an Authenticate request answers it: "not enabled"
    /// when off, "authentication failed" for an unknown user when on.
    pub async fn auth_enabled(&self) -> Result<bool, EtcdError> {
        if let Some(seen) = self.0.auth_seen {
            return Ok(seen);
        }
        let mut auth = self.0.client.auth_client();
        let probe = auth.authenticate("__ferry_probe__".into(), String::new());
        match self.timed_raw(probe).await {
            Ok(_) => Ok(true),
            Err(e) if is_auth_not_enabled(&e) => Ok(false),
            Err(e) => match classify(&self.0.name, "probing authentication", &e) {
                EtcdError::AuthFailed { .. } => Ok(true),
                other => Err(other),
            },
        }
    }

    /// The largest value under the prefix, read page by page at one
    /// revision (etcd cannot report sizes without the values).
    pub async fn max_value_len_in_prefix(&self) -> Result<Option<LargestValue>, EtcdError> {
        let mut cursor = RangeCursor::prefix(&self.0.prefix, 0);
        let mut best: Option<LargestValue> = None;
        while let Some(page) = cursor.next_page(self).await? {
            for kv in &page {
                if best
                    .as_ref()
                    .is_none_or(|b| kv.value().len() > b.value_bytes)
                {
                    best = Some(LargestValue {
                        key: kv.key().to_vec(),
                        value_bytes: kv.value().len(),
                    });
                }
            }
        }
        Ok(best)
    }
}

async fn connect_timed(
    name: &str,
    eps: &[String],
    opts: ConnectOptions,
) -> Result<Result<Client, etcd_client::Error>, EtcdError> {
    // Boxed: etcd-client's connect future is large, and every caller's
    // future would otherwise carry it.
    tokio::time::timeout(CONNECT_TIMEOUT, Box::pin(Client::connect(eps, Some(opts))))
        .await
        .map_err(|_| EtcdError::Unreachable {
            store: name.to_string(),
            detail: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        })
}

/// TLS settings from the URL's query: `cacert` (PEM file of the CA that
/// signed the server), optional `cert` and `key` (client certificate), and
/// optional `servername`.
fn tls_options(
    name: &str,
    params: &std::collections::BTreeMap<String, String>,
) -> Result<etcd_client::TlsOptions, EtcdError> {
    let read = |what: &str, path: &str| {
        std::fs::read(path).map_err(|e| EtcdError::Config {
            store: name.to_string(),
            reason: format!(
                "cannot read the {what} file {path} ({e}); fix the `{what}` query parameter"
            ),
        })
    };
    let mut tls = etcd_client::TlsOptions::new();
    match params.get("cacert").or_else(|| params.get("ca")) {
        Some(path) => tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read("cacert", path)?)),
        None => {
            return Err(EtcdError::Config {
                store: name.to_string(),
                reason: "etcd+tls needs the CA that signed the server: add ?cacert=/path/to/ca.pem to the URL".into(),
            })
        }
    }
    if let (Some(cert), Some(key)) = (params.get("cert"), params.get("key")) {
        tls = tls.identity(etcd_client::Identity::from_pem(
            read("cert", cert)?,
            read("key", key)?,
        ));
    }
    if let Some(sni) = params.get("servername") {
        tls = tls.domain_name(sni.clone());
    }
    Ok(tls)
}

/// `[start, end)` of every key starting with `prefix` (the whole keyspace
/// for an empty prefix).
pub(crate) fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.to_vec(), end);
        }
    }
    // All 0xff: every key from `prefix` on.
    (prefix.to_vec(), vec![0])
}

/// True when a range over `prefix` also covers Ferry's reserved keys.
pub(crate) fn range_covers_reserved(prefix: &[u8]) -> bool {
    RESERVED_PREFIX.starts_with(prefix)
}

/// Pages through `[start, end)` in key order at one revision.
pub(crate) struct RangeCursor {
    next: Vec<u8>,
    end: Vec<u8>,
    /// 0 until the first page pins it to that page's header revision.
    pub revision: i64,
    limit: i64,
    keys_only: bool,
    reserved: bool,
    done: bool,
}

impl RangeCursor {
    /// Every key under `prefix`, read at `revision` (0: the current one).
    pub fn prefix(prefix: &[u8], revision: i64) -> Self {
        let (start, end) = prefix_range(prefix);
        RangeCursor {
            next: start,
            end,
            revision,
            limit: PAGE_MAX_KEYS,
            keys_only: false,
            reserved: false,
            done: false,
        }
    }

    /// Every key in `[start, end)`, read at `revision` (0: the current one).
    pub fn between(start: Vec<u8>, end: Vec<u8>, revision: i64) -> Self {
        RangeCursor {
            next: start,
            end,
            ..Self::prefix(b"", revision)
        }
    }

    /// The end of the range of keys under `prefix` (exclusive).
    pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
        prefix_range(prefix).1
    }

    /// Keys only (no values): for sweeps.
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }

    /// Also return Ferry's reserved keys (to read Ferry's own records).
    pub fn with_reserved(mut self) -> Self {
        self.reserved = true;
        self
    }

    /// The next page, without Ferry's reserved keys (unless asked); `None` when done. A
    /// page may be empty when it held only reserved keys.
    pub async fn next_page(
        &mut self,
        store: &EtcdStore,
    ) -> Result<Option<Vec<KeyValue>>, EtcdError> {
        if self.done {
            return Ok(None);
        }
        loop {
            let mut opts = GetOptions::new()
                .with_range(self.end.clone())
                .with_limit(self.limit)
                .with_revision(self.revision);
            if self.keys_only {
                opts = opts.with_keys_only();
            }
            let mut kv = store.kv();
            let r = store.timed_raw(kv.get(self.next.clone(), Some(opts))).await;
            let mut resp = match r {
                Ok(r) => r,
                Err(e) if is_response_too_large(&e) && self.limit > 1 => {
                    self.limit = (self.limit / 4).max(1);
                    continue;
                }
                Err(e) => return Err(classify(store.name(), "reading a page of keys", &e)),
            };
            if self.revision == 0 {
                self.revision = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            match kvs.last() {
                Some(last) if more => {
                    self.next = last.key().to_vec();
                    self.next.push(0);
                }
                _ => self.done = true,
            }
            self.adapt(&kvs);
            let reserved = self.reserved;
            return Ok(Some(
                kvs.into_iter()
                    .filter(|kv| reserved || !is_reserved(kv.key()))
                    .collect(),
            ));
        }
    }

    /// Sizes the next page from this one so pages stay near
    /// [`PAGE_TARGET_BYTES`].
    fn adapt(&mut self, kvs: &[KeyValue]) {
        if kvs.is_empty() {
            return;
        }
        let bytes: usize = kvs
            .iter()
            .map(|kv| kv.key().len() + kv.value().len() + 64)
            .sum();
        let per_key = (bytes / kvs.len()).max(1);
        let want = (PAGE_TARGET_BYTES / per_key) as i64;
        self.limit = want.clamp(1, PAGE_MAX_KEYS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_range(b"app"), (b"app".to_vec(), b"apq".to_vec()));
        assert_eq!(prefix_range(b"a\xff"), (b"a\xff".to_vec(), b"b".to_vec()));
        assert_eq!(prefix_range(b""), (vec![0], vec![0]));
        assert_eq!(prefix_range(b"\xff"), (b"\xff".to_vec(), vec![0]));
        assert!(range_covers_reserved(b""));
        assert!(range_covers_reserved(b"__f"));
        assert!(!range_covers_reserved(b"app"));
    }
}
