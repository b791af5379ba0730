//! Vault KV version 2 (OpenBao too) as a Ferry store.
//!
//! A `vault://host:port/<mount>/<path>` URL names one secret (or, for
//! listing, a folder) in a KV v2 mount. The token comes from the URL or
//! `VAULT_TOKEN`; it is sent only in the `X-Vault-Token` header and never
//! shown. Errors name the store by its redacted URL and say what to do.
//!
//! This module reads and writes the current version of one secret as a JSON
//! object (Cells' Vault config store keeps its whole document as the
//! secret's data); copying every version with its metadata builds on it.

pub mod connector;
pub mod pipeline;
pub mod versions;

use ferry_core::StoreUrl;
use serde_json::{Map, Value};
use std::time::Duration;

/// Vault's and OpenBao's default `max_request_size` (32 MiB): a larger
/// secret cannot be written.
pub const MAX_REQUEST_BYTES: usize = 32 << 20;

/// Why a Vault request failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("Vault {store} is unreachable ({detail}); check that it runs there and the host and port in the URL")]
    Unreachable { store: String, detail: String },
    #[error("Vault {store} refused the token; give a valid token in VAULT_TOKEN or the URL (vault://TOKEN@host:8200/mount/path)")]
    BadToken { store: String },
    #[error("Vault {store}: the mount `{mount}` is KV version {version}; Ferry needs a KV version 2 mount (vault secrets enable -version=2 kv)")]
    NotKv2 {
        store: String,
        mount: String,
        version: String,
    },
    #[error("Vault {store}: there is no mount `{mount}`; check the first path segment of the URL")]
    NoMount { store: String, mount: String },
    #[error("Vault {store} rejected the path `{path}` ({detail}); use a path of letters, digits, `-`, `_`, `.` and `/`")]
    BadPath {
        store: String,
        path: String,
        detail: String,
    },
    #[error("Vault {store}: {detail}")]
    Server {
        store: String,
        /// The HTTP status, 0 when the request never got one.
        status: u16,
        detail: String,
    },
    #[error("{0} is not a Vault URL")]
    NotVault(String),
}

impl VaultError {
    /// How the pipeline treats it: outages and server-side failures retry,
    /// a request Vault refuses stops the shard, a bad token or mount stops
    /// everything.
    pub fn kind(&self) -> ferry_core::ErrorKind {
        use ferry_core::ErrorKind as K;
        match self {
            VaultError::Unreachable { .. } => K::Transient,
            VaultError::Server { status, .. } if *status >= 500 || *status == 429 => K::Transient,
            VaultError::Server { .. } | VaultError::BadPath { .. } => K::Permanent,
            VaultError::BadToken { .. }
            | VaultError::NotKv2 { .. }
            | VaultError::NoMount { .. }
            | VaultError::NotVault(_) => K::Fatal,
        }
    }
}

/// One KV v2 secret location.
#[derive(Clone)]
pub struct VaultStore {
    http: reqwest::Client,
    base: String,
    pub(crate) mount: String,
    pub(crate) path: String,
    token: String,
    pub(crate) name: String,
}

impl VaultStore {
    /// Connects, checks the token and that the mount is KV version 2.
    pub async fn connect(url: &StoreUrl) -> Result<VaultStore, VaultError> {
        let StoreUrl::Vault {
            tls,
            endpoint,
            mount,
            path,
            params,
            ..
        } = url
        else {
            return Err(VaultError::NotVault(url.to_string()));
        };
        // Cells' own form names the secret in `?key=` (`vault://h:8200/kv?key=keyring`);
        // the documented form puts it in the path (`vault://h:8200/kv/keyring`). Both work.
        let path = match (path.is_empty(), params.get("key")) {
            (true, Some(k)) => k.trim_matches('/').to_string(),
            _ => path.clone(),
        };
        // An HTTP client resolves `.` and `..` before Vault sees them, so such
        // a path would quietly name another secret: refuse it here.
        if path.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(VaultError::BadPath {
                store: url.to_string(),
                path,
                detail: "`.` and `..` segments are not allowed".into(),
            });
        }
        let token = url
            .secret()
            .map(str::to_string)
            .or_else(|| std::env::var("VAULT_TOKEN").ok())
            .unwrap_or_default();
        // One process-wide crypto provider for rustls; a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| VaultError::Server {
                store: url.to_string(),
                status: 0,
                detail: format!("cannot set up HTTP: {e}"),
            })?;
        let store = VaultStore {
            http,
            base: format!("{}://{endpoint}", if *tls { "https" } else { "http" }),
            mount: mount.clone(),
            path,
            token,
            name: url.to_string(),
        };
        store.check_mount().await?;
        Ok(store)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn call(
        &self,
        method: reqwest::Method,
        api: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), VaultError> {
        let mut rb = self
            .http
            .request(method, format!("{}/v1/{api}", self.base))
            .header("X-Vault-Token", &self.token);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.map_err(|e| VaultError::Unreachable {
            store: self.name.clone(),
            detail: root_cause(&e),
        })?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status == 403 {
            return Err(VaultError::BadToken {
                store: self.name.clone(),
            });
        }
        Ok((status, body))
    }

    async fn check_mount(&self) -> Result<(), VaultError> {
        // The token first: a mount lookup answers 403 both for a bad token
        // and for a mount that does not exist.
        self.call(reqwest::Method::GET, "auth/token/lookup-self", None)
            .await?;
        let (status, body) = match self
            .call(
                reqwest::Method::GET,
                &format!("sys/internal/ui/mounts/{}", self.mount),
                None,
            )
            .await
        {
            Err(VaultError::BadToken { .. }) => (404, Value::Null),
            other => other?,
        };
        if status == 400 || status == 404 || body["data"].is_null() {
            return Err(VaultError::NoMount {
                store: self.name.clone(),
                mount: self.mount.clone(),
            });
        }
        let version = body["data"]["options"]["version"]
            .as_str()
            .unwrap_or("1")
            .to_string();
        if version != "2" {
            return Err(VaultError::NotKv2 {
                store: self.name.clone(),
                mount: self.mount.clone(),
                version,
            });
        }
        Ok(())
    }

    fn bad_path(&self, status: u16, body: &Value) -> VaultError {
        VaultError::BadPath {
            store: self.name.clone(),
            path: self.path.clone(),
            detail: format!("HTTP {status}: {}", errors(body)),
        }
    }

    /// The current version's data, or `None` when the secret is absent.
    pub async fn read(&self) -> Result<Option<Map<String, Value>>, VaultError> {
        self.read_at(&self.path.clone()).await
    }

    /// The current data of the secret at `path` (relative to the mount).
    pub async fn read_at(&self, path: &str) -> Result<Option<Map<String, Value>>, VaultError> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("{}/data/{}", self.mount, path),
                None,
            )
            .await?;
        match status {
            200 => Ok(body["data"]["data"].as_object().cloned()),
            404 => Ok(None),
            400 => Err(self.bad_path(status, &body)),
            _ => Err(VaultError::Server {
                store: self.name.clone(),
                status,
                detail: format!(
                    "reading {} failed with HTTP {status}: {}",
                    path,
                    errors(&body)
                ),
            }),
        }
    }

    /// Writes `data` as a new version; returns its number.
    pub async fn write(&self, data: &Map<String, Value>) -> Result<u64, VaultError> {
        self.write_at(&self.path.clone(), data).await
    }

    /// Writes `data` as a new version of the secret at `path`.
    pub async fn write_at(&self, path: &str, data: &Map<String, Value>) -> Result<u64, VaultError> {
        let body = serde_json::json!({ "data": data });
        let (status, resp) = self
            .call(
                reqwest::Method::POST,
                &format!("{}/data/{}", self.mount, path),
                Some(&body),
            )
            .await?;
        match status {
            200 | 204 => Ok(resp["data"]["version"].as_u64().unwrap_or(0)),
            400 | 405 => Err(self.bad_path(status, &resp)),
            _ => Err(VaultError::Server {
                store: self.name.clone(),
                status,
                detail: format!(
                    "writing {} failed with HTTP {status}: {}",
                    path,
                    errors(&resp)
                ),
            }),
        }
    }
}

pub(crate) fn errors(body: &Value) -> String {
    body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "no detail".into())
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
