//! Every version of every secret, with its metadata.
//!
//! Vault cannot set a version's number or creation time, so a copy writes
//! a secret's versions in order onto a target that does not hold the
//! secret yet: version numbers then line up. A version that is
//! soft-deleted or destroyed at the source cannot be read (reading it would
//! mean undeleting it at the source); the target gets an empty placeholder
//! version in that state instead. Original creation times are kept in the
//! target's `custom_metadata` under `ferry-created-v<N>` (Vault allows 64
//! keys; they are skipped when the source's own keys leave no room).

use crate::{VaultError, VaultStore};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Custom-metadata key prefix for original creation times.
pub const CREATED_KEY_PREFIX: &str = "ferry-created-v";
const MAX_CUSTOM_KEYS: usize = 64;

/// One version's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionMeta {
    pub created_time: String,
    pub deleted: bool,
    pub destroyed: bool,
}

/// A secret's metadata, as far as Ferry reproduces it.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretMeta {
    pub current_version: u64,
    pub oldest_version: u64,
    pub max_versions: u64,
    pub cas_required: bool,
    pub delete_version_after: String,
    pub custom_metadata: Map<String, Value>,
    pub versions: BTreeMap<u64, VersionMeta>,
}

impl SecretMeta {
    fn from_api(d: &Value) -> SecretMeta {
        let versions = d["versions"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        Some((
                            k.parse().ok()?,
                            VersionMeta {
                                created_time: v["created_time"].as_str().unwrap_or("").to_string(),
                                deleted: !v["deletion_time"].as_str().unwrap_or("").is_empty(),
                                destroyed: v["destroyed"].as_bool().unwrap_or(false),
                            },
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        SecretMeta {
            current_version: d["current_version"].as_u64().unwrap_or(0),
            oldest_version: d["oldest_version"].as_u64().unwrap_or(0),
            max_versions: d["max_versions"].as_u64().unwrap_or(0),
            cas_required: d["cas_required"].as_bool().unwrap_or(false),
            delete_version_after: d["delete_version_after"]
                .as_str()
                .unwrap_or("0s")
                .to_string(),
            custom_metadata: d["custom_metadata"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
            versions,
        }
    }

    /// The custom metadata without Ferry's own keys.
    pub fn own_custom(&self) -> Map<String, Value> {
        self.custom_metadata
            .iter()
            .filter(|(k, _)| !k.starts_with(CREATED_KEY_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl VaultStore {
    fn api(&self, kind: &str, path: &str) -> String {
        format!("{}/{kind}/{}", self.mount, path.trim_matches('/'))
    }

    /// Every secret path under the URL's path, recursively, relative to the mount.
    pub async fn list_all(&self) -> Result<Vec<String>, VaultError> {
        let mut out = Vec::new();
        let mut folders = vec![self.path.trim_matches('/').to_string()];
        // Bounded: a folder is listed once; Vault's tree is finite.
        while let Some(folder) = folders.pop() {
            let (status, body) = self
                .call(
                    reqwest::Method::GET,
                    &format!("{}?list=true", self.api("metadata", &folder)),
                    None,
                )
                .await?;
            if status == 404 {
                continue;
            }
            for k in body["data"]["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let full = if folder.is_empty() {
                    k.to_string()
                } else {
                    format!("{folder}/{k}")
                };
                match full.strip_suffix('/') {
                    Some(sub) => folders.push(sub.to_string()),
                    None => out.push(full),
                }
            }
        }
        // A URL naming one secret (not a folder) lists nothing: take the secret.
        if out.is_empty() && !self.path.is_empty() && self.metadata(&self.path).await?.is_some() {
            out.push(self.path.trim_matches('/').to_string());
        }
        out.sort();
        Ok(out)
    }

    pub async fn metadata(&self, path: &str) -> Result<Option<SecretMeta>, VaultError> {
        let (status, body) = self
            .call(reqwest::Method::GET, &self.api("metadata", path), None)
            .await?;
        match status {
            200 => Ok(Some(SecretMeta::from_api(&body["data"]))),
            404 => Ok(None),
            _ => Err(self.server(status, &body, "reading metadata of", path)),
        }
    }

    pub async fn read_version(
        &self,
        path: &str,
        version: u64,
    ) -> Result<Option<Map<String, Value>>, VaultError> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("{}?version={version}", self.api("data", path)),
                None,
            )
            .await?;
        match status {
            200 => Ok(body["data"]["data"].as_object().cloned()),
            404 => Ok(None),
            _ => Err(self.server(status, &body, "reading", path)),
        }
    }

    async fn post(
        &self,
        api: String,
        body: Value,
        what: &str,
        path: &str,
    ) -> Result<Value, VaultError> {
        let (status, resp) = self.call(reqwest::Method::POST, &api, Some(&body)).await?;
        if status >= 300 {
            return Err(self.server(status, &resp, what, path));
        }
        Ok(resp)
    }

    fn server(&self, status: u16, body: &Value, what: &str, path: &str) -> VaultError {
        VaultError::Server {
            store: self.name.clone(),
            status,
            detail: format!(
                "{what} {path} failed with HTTP {status}: {}",
                crate::errors(body)
            ),
        }
    }

    /// Copies one secret with all its versions and metadata onto `dst`,
    /// which must not hold it yet. Returns the versions written.
    pub async fn copy_secret_to(&self, dst: &VaultStore, path: &str) -> Result<u64, VaultError> {
        let Some(meta) = self.metadata(path).await? else {
            return Ok(0);
        };
        if let Some(existing) = dst.metadata(path).await? {
            if existing.current_version > 0 {
                return Err(VaultError::Server {
                    store: dst.name.clone(),
                    status: 0,
                    detail: format!(
                        "{path} already has {} versions on the target; version numbers could not line up: copy onto an empty path",
                        existing.current_version
                    ),
                });
            }
        }
        let mut custom = meta.own_custom();
        let room = MAX_CUSTOM_KEYS.saturating_sub(custom.len());
        if meta.versions.len() <= room {
            for (v, vm) in &meta.versions {
                custom.insert(
                    format!("{CREATED_KEY_PREFIX}{v}"),
                    Value::String(vm.created_time.clone()),
                );
            }
        }
        // Metadata first (max_versions makes the target trim like the
        // source), check-and-set last so the copy itself is not refused.
        let md = |cas: bool| {
            json!({
                "max_versions": meta.max_versions,
                "cas_required": cas,
                "delete_version_after": meta.delete_version_after,
                "custom_metadata": custom,
            })
        };
        dst.post(
            dst.api("metadata", path),
            md(false),
            "writing metadata of",
            path,
        )
        .await?;
        let mut written = 0;
        for v in 1..=meta.current_version {
            let state = meta.versions.get(&v);
            let data = match state {
                Some(s) if !s.deleted && !s.destroyed => {
                    self.read_version(path, v).await?.unwrap_or_default()
                }
                _ => Map::new(),
            };
            dst.post(
                dst.api("data", path),
                json!({"data": data, "options": {"cas": v - 1}}),
                "writing",
                path,
            )
            .await?;
            written += 1;
            // Trimmed at the source (below its oldest version): destroyed
            // here, and the target's max_versions trims it as the source did.
            let (deleted, destroyed) = state.map_or((false, true), |s| (s.deleted, s.destroyed));
            // A version can be both soft-deleted and destroyed: reproduce both, in order.
            if deleted {
                dst.post(
                    dst.api("delete", path),
                    json!({"versions": [v]}),
                    "deleting a version of",
                    path,
                )
                .await?;
            }
            if destroyed {
                dst.post(
                    dst.api("destroy", path),
                    json!({"versions": [v]}),
                    "destroying a version of",
                    path,
                )
                .await?;
            }
        }
        if meta.cas_required {
            dst.post(
                dst.api("metadata", path),
                md(true),
                "writing metadata of",
                path,
            )
            .await?;
        }
        Ok(written)
    }

    /// Differences between this secret and `other`'s, version by version;
    /// empty when equal.
    pub async fn compare_secret(
        &self,
        other: &VaultStore,
        path: &str,
    ) -> Result<Vec<String>, VaultError> {
        self.compare_secret_at(other, path, path).await
    }

    /// [`Self::compare_secret`] with the secret at `other_path` on `other`.
    pub async fn compare_secret_at(
        &self,
        other: &VaultStore,
        path: &str,
        other_path: &str,
    ) -> Result<Vec<String>, VaultError> {
        let (a, b) = (
            self.metadata(path).await?,
            other.metadata(other_path).await?,
        );
        let (Some(a), Some(b)) = (a, b) else {
            return Ok(vec![format!("{path}: present on one side only")]);
        };
        let mut diffs = Vec::new();
        if a.current_version != b.current_version {
            diffs.push(format!(
                "{path}: current version {} vs {}",
                a.current_version, b.current_version
            ));
        }
        if (a.max_versions, a.cas_required, &a.delete_version_after)
            != (b.max_versions, b.cas_required, &b.delete_version_after)
        {
            diffs.push(format!(
                "{path}: max_versions/cas_required/delete_version_after differ"
            ));
        }
        if a.own_custom() != b.own_custom() {
            diffs.push(format!("{path}: custom_metadata differs"));
        }
        for (v, va) in &a.versions {
            let Some(vb) = b.versions.get(v) else {
                diffs.push(format!("{path} v{v}: missing on the target"));
                continue;
            };
            if (va.deleted, va.destroyed) != (vb.deleted, vb.destroyed) {
                diffs.push(format!("{path} v{v}: deleted/destroyed state differs"));
            } else if !va.deleted
                && !va.destroyed
                && self.read_version(path, *v).await? != other.read_version(other_path, *v).await?
            {
                diffs.push(format!("{path} v{v}: data differs"));
            }
        }
        Ok(diffs)
    }
}

/// What a check-and-set write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasWrite {
    /// Written as this version.
    Written(u64),
    /// The secret's current version was not the one given.
    Mismatch,
}

impl VaultStore {
    /// Writes `data` as the next version if the current one is `cas`.
    pub async fn write_cas(
        &self,
        path: &str,
        data: &Map<String, Value>,
        cas: u64,
    ) -> Result<CasWrite, VaultError> {
        let body = json!({"data": data, "options": {"cas": cas}});
        let (status, resp) = self
            .call(reqwest::Method::POST, &self.api("data", path), Some(&body))
            .await?;
        match status {
            200 | 204 => Ok(CasWrite::Written(
                resp["data"]["version"].as_u64().unwrap_or(cas + 1),
            )),
            400 if crate::errors(&resp).contains("check-and-set") => Ok(CasWrite::Mismatch),
            400 | 405 => Err(VaultError::BadPath {
                store: self.name.clone(),
                path: path.to_string(),
                detail: format!("HTTP {status}: {}", crate::errors(&resp)),
            }),
            _ => Err(self.server(status, &resp, "writing", path)),
        }
    }

    /// Soft-deletes (`delete`), undeletes or destroys versions of a secret.
    pub async fn version_op(
        &self,
        op: VersionOp,
        path: &str,
        versions: &[u64],
    ) -> Result<(), VaultError> {
        let (kind, what) = match op {
            VersionOp::Delete => ("delete", "deleting versions of"),
            VersionOp::Undelete => ("undelete", "undeleting versions of"),
            VersionOp::Destroy => ("destroy", "destroying versions of"),
        };
        self.post(
            self.api(kind, path),
            json!({ "versions": versions }),
            what,
            path,
        )
        .await
        .map(drop)
    }

    /// Sets a secret's metadata.
    pub async fn write_metadata(
        &self,
        path: &str,
        max_versions: u64,
        cas_required: bool,
        delete_version_after: &str,
        custom: &Map<String, Value>,
    ) -> Result<(), VaultError> {
        self.post(
            self.api("metadata", path),
            json!({
                "max_versions": max_versions,
                "cas_required": cas_required,
                "delete_version_after": delete_version_after,
                "custom_metadata": custom,
            }),
            "writing metadata of",
            path,
        )
        .await
        .map(drop)
    }

    /// Removes a secret with all its versions and metadata.
    pub async fn delete_secret(&self, path: &str) -> Result<(), VaultError> {
        let (status, resp) = self
            .call(reqwest::Method::DELETE, &self.api("metadata", path), None)
            .await?;
        if status >= 300 && status != 404 {
            return Err(self.server(status, &resp, "deleting", path));
        }
        Ok(())
    }

    /// The URL's path under the mount (a folder or one secret).
    pub fn root(&self) -> &str {
        self.path.trim_matches('/')
    }

    /// `path` (relative to the mount) relative to this store's root: the
    /// key Ferry journals, so a target can root it elsewhere.
    pub fn relative<'p>(&self, path: &'p str) -> &'p str {
        let root = self.root();
        if root.is_empty() {
            return path;
        }
        if path == root {
            return "";
        }
        path.strip_prefix(root)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(path)
    }

    /// The inverse of [`Self::relative`] on this store.
    pub fn absolute(&self, rel: &str) -> String {
        match (self.root(), rel) {
            (root, "") => root.to_string(),
            ("", rel) => rel.to_string(),
            (root, rel) => format!("{root}/{rel}"),
        }
    }
}

/// A state change of existing versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionOp {
    Delete,
    Undelete,
    Destroy,
}
