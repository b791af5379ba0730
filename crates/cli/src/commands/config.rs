//! `ferry config copy --from URL --to URL`: one configuration document,
//! copied once and checked byte for byte.
//!
//! A Cells etcd store keeps the whole JSON document as one value at the key
//! its URL path names (`etcd://h:2379/config` is key `config`), exactly the
//! bytes Cells reads and watches; a file target is written atomically. This
//! build copies between JSON files and etcd keys; Vault KV and `--versions`
//! come with the rest of the configuration work.
//!
//! `--follow` (from a file) polls the file every [`FOLLOW_POLL`] and copies
//! each new state once it parses: a file caught half-written is skipped
//! until a later look finds it whole, so the target never holds a state
//! that does not parse. Polling rather than inotify: it also sees editors
//! that replace the file, network filesystems and bind mounts.

use super::start::runtime;
use crate::cli::ConfigCopyArgs;
use crate::error::CliError;
use ferry_core::{ExitCode, StoreUrl};
use ferry_etcd::EtcdStore;
use ferry_file::{read_settled, write_atomic, DocError, Document, DEFAULT_SETTLE};
use std::path::Path;
use std::time::Duration;

/// How often `--follow` looks at the source file: well inside the one
/// second in which a change must reach the target.
pub const FOLLOW_POLL: Duration = Duration::from_millis(50);

fn doc_error(e: DocError) -> CliError {
    let code = match e {
        DocError::Write { .. } => ExitCode::Runtime,
        _ => ExitCode::Usage,
    };
    CliError::new(code, e.to_string())
}

/// Where a document lives.
enum Place {
    File(std::path::PathBuf),
    Etcd(StoreUrl),
    /// A KV v2 secret whose data is the document's top-level object (as
    /// Cells' Vault store keeps it): JSON is kept, byte layout is not.
    Vault(StoreUrl),
}

pub(crate) fn vault_error(e: ferry_vault::VaultError) -> CliError {
    use ferry_vault::VaultError as V;
    let code = match e {
        V::Unreachable { .. } | V::BadToken { .. } | V::NoMount { .. } | V::NotKv2 { .. } => {
            ExitCode::Refused
        }
        V::BadPath { .. } | V::NotVault(_) => ExitCode::Usage,
        V::Server { .. } => ExitCode::Runtime,
    };
    CliError::new(code, e.to_string())
}

fn place(raw: &str) -> Result<Place, CliError> {
    let url = StoreUrl::parse(raw)?;
    match url {
        StoreUrl::File { path } => Ok(Place::File(path)),
        StoreUrl::Etcd { ref prefix, .. } if !prefix.is_empty() => Ok(Place::Etcd(url)),
        StoreUrl::Etcd { .. } => Err(CliError::new(
            ExitCode::Usage,
            format!("{url} names no key; the document goes to one key, e.g. etcd://127.0.0.1:2379/config"),
        )),
        StoreUrl::Vault { ref path, ref params, .. } if !path.is_empty() || params.contains_key("key") => Ok(Place::Vault(url)),
        StoreUrl::Vault { .. } => Err(CliError::new(
            ExitCode::Usage,
            format!("{url} names no secret under its mount; e.g. vault://127.0.0.1:8200/secret/cells/keyring"),
        )),
        other => Err(CliError::new(
            ExitCode::Usage,
            format!("{other}: this build copies configuration between JSON files, etcd keys and Vault KV secrets only"),
        )),
    }
}

fn label(p: &Place) -> String {
    match p {
        Place::File(path) => path.display().to_string(),
        Place::Etcd(u) | Place::Vault(u) => u.to_string(),
    }
}

async fn load(p: &Place) -> Result<Document, CliError> {
    match p {
        Place::File(path) => read_settled(path, DEFAULT_SETTLE).map_err(doc_error),
        Place::Etcd(url) => {
            let store = EtcdStore::connect(url)
                .await
                .map_err(super::precheck::refused)?;
            let mut c = store.client();
            let r = c
                .get(store.prefix(), None)
                .await
                .map_err(|e| CliError::new(ExitCode::Runtime, format!("reading {url}: {e}")))?;
            let Some(kv) = r.kvs().first() else {
                return Err(CliError::new(
                    ExitCode::Usage,
                    format!("{url} holds no document (the key is absent)"),
                ));
            };
            Document::parse(Path::new(&url.to_string()), kv.value().to_vec()).map_err(doc_error)
        }
        Place::Vault(url) => {
            let store = ferry_vault::VaultStore::connect(url)
                .await
                .map_err(vault_error)?;
            let Some(data) = store.read().await.map_err(vault_error)? else {
                return Err(CliError::new(
                    ExitCode::Usage,
                    format!("{url} holds no document (the secret is absent)"),
                ));
            };
            let value = serde_json::Value::Object(data);
            let bytes = serde_json::to_vec_pretty(&value).expect("JSON serialises");
            Ok(Document { bytes, value })
        }
    }
}

async fn save(p: &Place, doc: &Document) -> Result<(), CliError> {
    match p {
        Place::File(path) => write_atomic(path, &doc.bytes).map_err(doc_error),
        Place::Etcd(url) => {
            let store = EtcdStore::connect(url)
                .await
                .map_err(super::precheck::refused)?;
            if doc.bytes.len() + store.prefix().len() + 512 > ferry_etcd::TARGET_MAX_REQUEST_BYTES {
                return Err(CliError::new(
                    ExitCode::Refused,
                    format!(
                        "the document is {} bytes, more than {url} accepts in one request ({} bytes); raise --max-request-bytes on that etcd",
                        doc.bytes.len(),
                        ferry_etcd::TARGET_MAX_REQUEST_BYTES
                    ),
                ));
            }
            let mut c = store.client();
            c.put(store.prefix().to_vec(), doc.bytes.clone(), None)
                .await
                .map_err(|e| CliError::new(ExitCode::Runtime, format!("writing {url}: {e}")))?;
            Ok(())
        }
        Place::Vault(url) => {
            let Some(map) = doc.value.as_object() else {
                return Err(CliError::new(
                    ExitCode::Usage,
                    format!(
                        "{url}: a Vault secret holds a JSON object, and this document is not one"
                    ),
                ));
            };
            let store = ferry_vault::VaultStore::connect(url)
                .await
                .map_err(vault_error)?;
            store.write(map).await.map_err(vault_error)?;
            Ok(())
        }
    }
}

pub fn copy(a: ConfigCopyArgs) -> Result<(), CliError> {
    let from = place(&a.from)?;
    let to = place(&a.to)?;
    if label(&from) == label(&to) {
        return Err(CliError::new(
            ExitCode::Usage,
            format!(
                "--from and --to are the same store ({}); give a different --to",
                label(&to)
            ),
        ));
    }
    if a.versions {
        let (Place::Vault(f), Place::Vault(t)) = (&from, &to) else {
            return Err(CliError::new(ExitCode::Usage, "--versions copies between two Vault KV v2 locations; give vault:// URLs to --from and --to"));
        };
        return runtime()?.block_on(copy_versions(f, t));
    }
    runtime()?.block_on(async {
        let doc = load(&from).await?;
        save(&to, &doc).await?;
        let back = load(&to).await?;
        // Vault keeps the JSON, not its layout: only JSON equality applies.
        let byte_exact = !matches!(from, Place::Vault(_)) && !matches!(to, Place::Vault(_));
        let (bytes, json) = (!byte_exact || back.same_bytes(&doc), back.same_json(&doc));
        println!(
            "copied {} bytes from {} to {}; read back: bytes {}, JSON {}",
            doc.bytes.len(),
            label(&from),
            label(&to),
            match (byte_exact, bytes) {
                (false, _) => "not compared (Vault keeps JSON, not layout)",
                (true, true) => "identical",
                (true, false) => "DIFFER",
            },
            if json { "equal" } else { "DIFFERS" }
        );
        if !(bytes && json) {
            return Err(CliError::new(
                ExitCode::Runtime,
                format!("the copy at {} does not match its source", label(&to)),
            ));
        }
        if a.follow {
            follow(&from, &to, doc).await?;
        }
        Ok(())
    })
}

/// Copies every new, whole state of the source file until SIGINT/SIGTERM.
async fn follow(from: &Place, to: &Place, mut last: Document) -> Result<(), CliError> {
    let Place::File(path) = from else {
        return Err(CliError::new(
            ExitCode::Usage,
            "--follow needs a JSON file as --from in this build",
        ));
    };
    println!("following {}; Ctrl-C stops", path.display());
    let mut tick = tokio::time::interval(FOLLOW_POLL);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CliError::new(ExitCode::Runtime, format!("cannot watch for SIGTERM: {e}")))?;
    let mut copies = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        let doc = match ferry_file::read(path) {
            Ok(d) => d,
            // Half-written: look again next tick.
            Err(DocError::Invalid { .. }) => continue,
            Err(e) => return Err(doc_error(e)),
        };
        if doc.same_bytes(&last) {
            continue;
        }
        save(to, &doc).await?;
        copies += 1;
        last = doc;
    }
    println!("stopped following after {copies} changes");
    Ok(())
}

/// Every secret under `from` with all versions and metadata onto `to`, then
/// compared version by version.
async fn copy_versions(from: &StoreUrl, to: &StoreUrl) -> Result<(), CliError> {
    let src = ferry_vault::VaultStore::connect(from)
        .await
        .map_err(vault_error)?;
    let dst = ferry_vault::VaultStore::connect(to)
        .await
        .map_err(vault_error)?;
    let paths = src.list_all().await.map_err(vault_error)?;
    let mut versions = 0;
    for p in &paths {
        versions += src.copy_secret_to(&dst, p).await.map_err(vault_error)?;
    }
    let mut diffs = Vec::new();
    for p in &paths {
        diffs.extend(src.compare_secret(&dst, p).await.map_err(vault_error)?);
    }
    println!(
        "copied {} secrets ({versions} versions) from {from} to {to}; compared version by version: {} differences",
        paths.len(),
        diffs.len()
    );
    for d in diffs.iter().take(20) {
        println!("  {d}");
    }
    if !diffs.is_empty() {
        return Err(CliError::new(
            ExitCode::Runtime,
            format!("{} differences after the copy", diffs.len()),
        ));
    }
    Ok(())
}
