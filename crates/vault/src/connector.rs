//! A Vault KV v2 path as a Ferry source and target (see `ferry_connect`):
//! every secret under it, version by version with metadata; the target
//! also takes one JSON document (its top-level object as one secret) and a
//! directory of documents (one secret per file). Vault's writers are
//! stopped by the operator at cutover; the fence is one more complete look.

use crate::pipeline::{TailerOptions, VaultSink, VaultTailer};
use crate::{VaultError, VaultStore, MAX_REQUEST_BYTES};
use ferry_connect::check::line;
use ferry_connect::place::{Doc, DocumentPlace, VersionedPlace};
use ferry_connect::verify::{DocState, DocumentReader, SecretMeta, SecretsReader};
use ferry_connect::{
    async_trait, CheckContext, Connection, Connector, DataModel, Options, Reader, Refusal,
    SinkContext, Source, TailContext, Tailing, Target,
};
use ferry_core::{StoreKind, StoreUrl};
use ferry_replay::SharedSink;
use serde_json::{Map, Value};
use std::any::Any;
use std::sync::Arc;

pub struct VaultConnector;

impl Connector for VaultConnector {
    fn kind(&self) -> StoreKind {
        StoreKind::Vault
    }
    fn source_model(&self) -> Option<DataModel> {
        Some(DataModel::Secrets)
    }
    fn target_models(&self) -> &'static [DataModel] {
        &[DataModel::Secrets, DataModel::Document, DataModel::Files]
    }
    fn source(&self, url: &StoreUrl, _options: &Options) -> Result<Arc<dyn Source>, String> {
        Ok(Arc::new(VaultSource {
            url: url.clone(),
            store: Connection::default(),
        }))
    }
    fn document(&self, url: &StoreUrl) -> Result<Arc<dyn DocumentPlace>, Refusal> {
        match url {
            StoreUrl::Vault { path, params, .. } if !path.is_empty() || params.contains_key("key") => {
                Ok(Arc::new(SecretPlace(url.clone())))
            }
            _ => Err(Refusal::usage(format!("{url} names no secret under its mount; e.g. vault://127.0.0.1:8200/secret/cells/keyring"))),
        }
    }
    fn versioned(&self, url: &StoreUrl) -> Result<Arc<dyn VersionedPlace>, Refusal> {
        Ok(Arc::new(VersionsPlace(url.clone())))
    }
    fn target(&self, url: &StoreUrl, _options: &Options) -> Result<Arc<dyn Target>, String> {
        Ok(Arc::new(VaultTarget {
            url: url.clone(),
            store: Connection::default(),
        }))
    }
}

/// A Vault error as a refusal, with its exit code.
pub fn refusal(e: VaultError) -> Refusal {
    use VaultError as V;
    match e {
        V::Unreachable { .. } | V::BadToken { .. } | V::NoMount { .. } | V::NotKv2 { .. } => {
            Refusal::refused(e.to_string())
        }
        V::BadPath { .. } | V::NotVault(_) => Refusal::usage(e.to_string()),
        V::Server { .. } => Refusal::runtime(e.to_string()),
    }
}

/// A Vault KV v2 path, as a source.
pub struct VaultSource {
    url: StoreUrl,
    store: Connection<VaultStore>,
}

#[async_trait]
impl Source for VaultSource {
    fn url(&self) -> &StoreUrl {
        &self.url
    }
    fn holds_secrets(&self) -> bool {
        true
    }
    fn render(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        meta: &ferry_core::StoreMeta,
    ) -> ferry_connect::Rendered {
        let (version, metadata) = match meta {
            ferry_core::StoreMeta::Vault(m) => (
                Some(m.version),
                serde_json::to_value(m.as_ref()).unwrap_or(Value::Null),
            ),
            _ => (None, Value::Null),
        };
        ferry_connect::Rendered {
            key: serde_json::json!({ "path": String::from_utf8_lossy(key) }),
            // The version's metadata rides along whole, so a Kafka source
            // downstream gives a Vault target the same version states and
            // settings.
            after: value.map(|v| {
                let data = serde_json::from_slice::<Value>(v)
                    .unwrap_or_else(|_| ferry_connect::text_or_base64(v));
                serde_json::json!({ "version": version, "data": data, "metadata": metadata })
            }),
            created: version.map(|v| v == 1),
        }
    }
    fn model(&self) -> DataModel {
        DataModel::Secrets
    }
    async fn connect(&self) -> Result<(), String> {
        self.store
            .connect(VaultStore::connect(&self.url))
            .await
            .map(drop)
    }
    async fn precheck(&self, _ctx: &CheckContext) -> Result<(), Refusal> {
        let s = VaultStore::connect(&self.url).await.map_err(refusal)?;
        let n = s.list_all().await.map_err(refusal)?.len();
        line("source", format!("{}: reachable, token accepted, KV version 2, {n} secrets; read-only at cutover: external (stop its writers; Ferry refuses to open the target if a secret changes after the fence)", self.url));
        Ok(())
    }
    fn tail(&self, ctx: &TailContext) -> Result<Tailing, String> {
        let mut opts = TailerOptions::default();
        if let Some(p) = ctx.options.poll_interval {
            opts.poll_interval = p;
        }
        let t = VaultTailer::new(
            self.store.get(&self.url)?.clone(),
            self.url.to_string(),
            ctx.span,
            opts,
            Arc::clone(&ctx.seal),
        );
        Ok(Tailing {
            fence: Arc::new(t.fence_handle()),
            shared: Arc::new(()),
            tailer: ferry_connect::tailer(move |j, l, s| t.run(j, l, s)),
        })
    }
    fn reader(&self) -> Result<Reader, String> {
        Ok(Reader::Secrets(Arc::new(Secrets(
            self.store.get(&self.url)?.clone(),
        ))))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A Vault KV v2 path, as a target.
pub struct VaultTarget {
    url: StoreUrl,
    store: Connection<VaultStore>,
}

#[async_trait]
impl Target for VaultTarget {
    fn url(&self) -> &StoreUrl {
        &self.url
    }
    fn accepts(&self) -> &'static [DataModel] {
        &[DataModel::Secrets, DataModel::Document, DataModel::Files]
    }
    fn check_source(&self, source: &dyn Source) -> Result<(), String> {
        if let StoreUrl::Vault { path, params, .. } = &self.url {
            if path.is_empty()
                && !params.contains_key("key")
                && source.model() == DataModel::Document
            {
                return Err(format!(
                    "{} names no secret under its mount; e.g. vault://127.0.0.1:8200/secret/cells/keyring",
                    self.url
                ));
            }
        }
        Ok(())
    }
    async fn connect(&self) -> Result<(), String> {
        self.store
            .connect(VaultStore::connect(&self.url))
            .await
            .map(drop)
    }
    async fn precheck(&self, source: &dyn Source, ctx: &CheckContext) -> Result<(), Refusal> {
        let t = &self.url;
        let store = VaultStore::connect(t).await.map_err(refusal)?;
        if source.model() == DataModel::Document {
            if let Ok(Reader::Document(r)) = source.reader() {
                if let Some(d) = r.read().await.map_err(Refusal::usage)? {
                    if !d.json.as_ref().is_some_and(Value::is_object) {
                        return Err(Refusal::usage(format!(
                            "{t}: a Vault secret holds a JSON object, and {} is not one",
                            source.url()
                        )));
                    }
                    let size = d.bytes.map_or(0, |b| b.len());
                    if size + 64 > MAX_REQUEST_BYTES {
                        return Err(Refusal::refused(format!("the document is {size} bytes, more than Vault accepts in one request ({MAX_REQUEST_BYTES} bytes by default); raise max_request_size in its listener")));
                    }
                }
            }
        }
        let n = store.list_all().await.map_err(refusal)?.len();
        if n > 0 && !ctx.force && !ctx.resuming {
            return Err(Refusal::refused(format!("{t} already holds {n} secrets; copying overwrites it: pass --force to go ahead or choose another target")));
        }
        line(
            "target",
            format!("{t}: reachable, token accepted, KV version 2, {n} secrets"),
        );
        Ok(())
    }
    fn sink(&self, _ctx: &SinkContext<'_>) -> Result<SharedSink, String> {
        Ok(SharedSink::new(VaultSink::new(
            self.store.get(&self.url)?.clone(),
            self.url.to_string(),
        )))
    }
    fn reader(&self, source: &dyn Source) -> Result<Reader, String> {
        let store = self.store.get(&self.url)?.clone();
        Ok(if source.model() == DataModel::Document {
            Reader::Document(Arc::new(OneSecret(store)))
        } else {
            Reader::Secrets(Arc::new(Secrets(store)))
        })
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Every secret under a store's path.
struct Secrets(VaultStore);

fn err(e: VaultError) -> String {
    e.to_string()
}

#[async_trait]
impl SecretsReader for Secrets {
    fn name(&self) -> &str {
        self.0.name()
    }
    async fn list(&self) -> Result<Vec<String>, String> {
        Ok(self
            .0
            .list_all()
            .await
            .map_err(err)?
            .iter()
            .map(|p| self.0.relative(p).to_string())
            .collect())
    }
    fn absolute(&self, rel: &str) -> String {
        self.0.absolute(rel)
    }
    async fn metadata(&self, rel: &str) -> Result<Option<SecretMeta>, String> {
        Ok(self
            .0
            .metadata(&self.0.absolute(rel))
            .await
            .map_err(err)?
            .map(|m| SecretMeta {
                current_version: m.current_version,
                max_versions: m.max_versions,
                cas_required: m.cas_required,
                delete_version_after: m.delete_version_after.clone(),
                custom: m.own_custom(),
                versions: m
                    .versions
                    .iter()
                    .map(|(v, s)| (*v, (s.deleted, s.destroyed)))
                    .collect(),
            }))
    }
    async fn read_version(
        &self,
        rel: &str,
        version: u64,
    ) -> Result<Option<Map<String, Value>>, String> {
        self.0
            .read_version(&self.0.absolute(rel), version)
            .await
            .map_err(err)
    }
    async fn current(&self, rel: &str) -> Result<Option<Map<String, Value>>, String> {
        self.0.read_at(&self.0.absolute(rel)).await.map_err(err)
    }
}

/// The one secret a document was copied to.
struct OneSecret(VaultStore);

#[async_trait]
impl DocumentReader for OneSecret {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn holder(&self) -> &'static str {
        "Vault secret"
    }
    async fn read(&self) -> Result<Option<DocState>, String> {
        Ok(self.0.read().await.map_err(err)?.map(|d| DocState {
            bytes: None,
            json: Some(Value::Object(d)),
        }))
    }
}

/// One Vault secret holding a document's top-level object, for `ferry
/// config copy` (Vault keeps the JSON, not its layout).
pub struct SecretPlace(StoreUrl);

#[async_trait]
impl DocumentPlace for SecretPlace {
    fn label(&self) -> String {
        self.0.to_string()
    }
    fn keeps_bytes(&self) -> bool {
        false
    }
    async fn load(&self) -> Result<Doc, Refusal> {
        let url = &self.0;
        let store = VaultStore::connect(url).await.map_err(refusal)?;
        let Some(data) = store.read().await.map_err(refusal)? else {
            return Err(Refusal::usage(format!(
                "{url} holds no document (the secret is absent)"
            )));
        };
        let value = Value::Object(data);
        let bytes = serde_json::to_vec_pretty(&value).expect("JSON serialises");
        Ok(Doc { bytes, value })
    }
    async fn save(&self, doc: &Doc) -> Result<(), Refusal> {
        let url = &self.0;
        let Some(map) = doc.value.as_object() else {
            return Err(Refusal::usage(format!(
                "{url}: a Vault secret holds a JSON object, and this document is not one"
            )));
        };
        let store = VaultStore::connect(url).await.map_err(refusal)?;
        store.write(map).await.map_err(refusal)?;
        Ok(())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Every secret under a Vault path, with its history.
pub struct VersionsPlace(StoreUrl);

#[async_trait]
impl VersionedPlace for VersionsPlace {
    fn label(&self) -> String {
        self.0.to_string()
    }
    async fn copy_to(
        &self,
        dst: &dyn VersionedPlace,
    ) -> Result<(usize, u64, Vec<String>), Refusal> {
        let Some(dst) = dst.as_any().downcast_ref::<VersionsPlace>() else {
            return Err(Refusal::usage("--versions copies between two Vault KV v2 locations; give vault:// URLs to --from and --to"));
        };
        let src = VaultStore::connect(&self.0).await.map_err(refusal)?;
        let to = VaultStore::connect(&dst.0).await.map_err(refusal)?;
        let paths = src.list_all().await.map_err(refusal)?;
        let mut versions = 0;
        for p in &paths {
            versions += src.copy_secret_to(&to, p).await.map_err(refusal)?;
        }
        let mut diffs = Vec::new();
        for p in &paths {
            diffs.extend(src.compare_secret(&to, p).await.map_err(refusal)?);
        }
        Ok((paths.len(), versions, diffs))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{StoreMeta, VaultVersionMeta};

    #[test]
    fn an_event_renders_with_its_version_and_whole_metadata() {
        let s = VaultSource {
            url: StoreUrl::parse("vault://127.0.0.1:8200/secret/app").unwrap(),
            store: Connection::default(),
        };
        let meta = StoreMeta::Vault(Box::new(VaultVersionMeta {
            version: 2,
            deletion_time: "deleted".into(),
            max_versions: 5,
            ..Default::default()
        }));
        let r = s.render(b"db", Some(br#"{"password":"x"}"#), &meta);
        let after = r.after.unwrap();
        assert_eq!(after["version"], 2);
        assert_eq!(after["data"]["password"], "x");
        assert_eq!(after["metadata"]["max_versions"], 5);
        assert_eq!(after["metadata"]["deletion_time"], "deleted");
        assert_eq!(r.created, Some(false));
    }
}
