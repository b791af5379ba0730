//! `ferry config copy --from URL --to URL`: one configuration document,
//! copied once and checked byte for byte.
//!
//! A Cells etcd store keeps the whole JSON document as one value at the key
//! its URL path names (`etcd://h:2379/config` is key `config`), exactly the
//! bytes Cells reads and watches; a file target is written atomically. This
//! build copies between JSON files and etcd keys; Vault KV, `--follow` and
//! `--versions` come with the rest of the configuration work.

use super::start::runtime;
use crate::cli::ConfigCopyArgs;
use crate::error::CliError;
use ferry_core::{ExitCode, StoreUrl};
use ferry_etcd::EtcdStore;
use ferry_file::{read_settled, write_atomic, DocError, Document, DEFAULT_SETTLE};
use std::path::Path;

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
        other => Err(CliError::new(
            ExitCode::Usage,
            format!("{other}: this build copies configuration between JSON files and etcd keys only"),
        )),
    }
}

fn label(p: &Place) -> String {
    match p {
        Place::File(path) => path.display().to_string(),
        Place::Etcd(u) => u.to_string(),
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
    runtime()?.block_on(async {
        let doc = load(&from).await?;
        save(&to, &doc).await?;
        let back = load(&to).await?;
        let (bytes, json) = (back.same_bytes(&doc), back.same_json(&doc));
        println!(
            "copied {} bytes from {} to {}; read back: bytes {}, JSON {}",
            doc.bytes.len(),
            label(&from),
            label(&to),
            if bytes { "identical" } else { "DIFFER" },
            if json { "equal" } else { "DIFFERS" }
        );
        if !(bytes && json) {
            return Err(CliError::new(
                ExitCode::Runtime,
                format!("the copy at {} does not match its source", label(&to)),
            ));
        }
        Ok(())
    })
}
