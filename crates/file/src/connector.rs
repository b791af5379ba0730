//! JSON files as a Ferry source and target (see `ferry_connect`): one
//! document (`file:///etc/app.json`), or a directory of documents (Cells'
//! `certs/`), each by its relative path. The operator stops a file's
//! writers at cutover; the fence is one more complete look.

use crate::dir::DirTailer;
use crate::pipeline::{FileSink, FileTailer, TailerOptions};
use crate::{read, read_settled, DEFAULT_SETTLE};
use ferry_connect::check::line;
use ferry_connect::place::{Doc, DocumentPlace};
use ferry_connect::verify::{DocState, DocumentReader, FilesReader};
use ferry_connect::{
    async_trait, CheckContext, Connector, DataModel, Options, Reader, Refusal, SinkContext, Source,
    TailContext, Tailing, Target,
};
use ferry_core::{StoreKind, StoreUrl};
use ferry_replay::SharedSink;
use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct FileConnector;

fn path_of(url: &StoreUrl) -> Result<PathBuf, String> {
    match url {
        StoreUrl::File { path } => Ok(path.clone()),
        other => Err(format!("{other}: not a file URL")),
    }
}

impl Connector for FileConnector {
    fn kind(&self) -> StoreKind {
        StoreKind::File
    }
    fn source_model(&self) -> Option<DataModel> {
        Some(DataModel::Document)
    }
    fn target_models(&self) -> &'static [DataModel] {
        &[DataModel::Document]
    }
    fn source(&self, url: &StoreUrl, _options: &Options) -> Result<Arc<dyn Source>, String> {
        let path = path_of(url)?;
        Ok(if path.is_dir() {
            Arc::new(DirSource {
                url: url.clone(),
                path,
            })
        } else {
            Arc::new(FileSource {
                url: url.clone(),
                path,
            })
        })
    }
    fn document(&self, url: &StoreUrl) -> Result<Arc<dyn DocumentPlace>, Refusal> {
        Ok(Arc::new(FilePlace(path_of(url).map_err(Refusal::usage)?)))
    }
    fn target(&self, url: &StoreUrl, _options: &Options) -> Result<Arc<dyn Target>, String> {
        Ok(Arc::new(FileTarget {
            url: url.clone(),
            path: path_of(url)?,
        }))
    }
}

/// A file's event as a consumer outside Ferry sees it: the path (and the
/// leaf or relative path) as the key, the JSON it holds as `after`.
fn render(path: &Path, key: &[u8], value: Option<&[u8]>) -> ferry_connect::Rendered {
    ferry_connect::Rendered {
        key: serde_json::json!({
            "path": path.display().to_string(),
            "key": String::from_utf8_lossy(key),
        }),
        after: value.map(|v| {
            serde_json::from_slice(v).unwrap_or_else(|_| ferry_connect::text_or_base64(v))
        }),
        created: None,
    }
}

/// One JSON document, as a source.
pub struct FileSource {
    url: StoreUrl,
    path: PathBuf,
}

impl FileSource {
    /// The file's name (Cells' routes are told apart by it).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl Source for FileSource {
    fn url(&self) -> &StoreUrl {
        &self.url
    }
    fn holds_secrets(&self) -> bool {
        // A configuration file or certificate may hold secrets (Cells'
        // pydio.json, its keyring): published only when asked.
        true
    }
    fn render(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        _meta: &ferry_core::StoreMeta,
    ) -> ferry_connect::Rendered {
        render(&self.path, key, value)
    }
    fn model(&self) -> DataModel {
        DataModel::Document
    }
    fn shards(&self, _requested: u32) -> u32 {
        1
    }
    async fn connect(&self) -> Result<(), String> {
        read_settled(&self.path, DEFAULT_SETTLE)
            .map(drop)
            .map_err(|e| e.to_string())
    }
    async fn precheck(&self, _ctx: &CheckContext) -> Result<(), Refusal> {
        let doc =
            read_settled(&self.path, DEFAULT_SETTLE).map_err(|e| Refusal::usage(e.to_string()))?;
        line(
            "source",
            format!(
                "{}: a JSON document of {} bytes; read-only at cutover: external (stop its writers; Ferry refuses to open the target if the file changes after the fence)",
                self.path.display(),
                doc.bytes.len()
            ),
        );
        Ok(())
    }
    fn tail(&self, ctx: &TailContext) -> Result<Tailing, String> {
        let t = FileTailer::new(
            self.path.clone(),
            self.url.to_string(),
            ctx.span,
            TailerOptions {
                with_keys: ctx.with_keys,
                ..Default::default()
            },
            Arc::clone(&ctx.seal),
        );
        Ok(Tailing {
            fence: Arc::new(t.fence_handle()),
            shared: Arc::new(()),
            tailer: ferry_connect::tailer(move |j, l, s| t.run(j, l, s)),
        })
    }
    fn reader(&self) -> Result<Reader, String> {
        Ok(Reader::Document(Arc::new(FileDoc {
            name: self.path.display().to_string(),
            path: self.path.clone(),
            settle: true,
        })))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A directory of documents, as a source.
pub struct DirSource {
    url: StoreUrl,
    path: PathBuf,
}

#[async_trait]
impl Source for DirSource {
    fn url(&self) -> &StoreUrl {
        &self.url
    }
    fn holds_secrets(&self) -> bool {
        // A configuration file or certificate may hold secrets (Cells'
        // pydio.json, its keyring): published only when asked.
        true
    }
    fn render(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        _meta: &ferry_core::StoreMeta,
    ) -> ferry_connect::Rendered {
        render(&self.path, key, value)
    }
    fn model(&self) -> DataModel {
        DataModel::Files
    }
    async fn connect(&self) -> Result<(), String> {
        crate::dir::list(&self.path)
            .map(drop)
            .map_err(|e| e.to_string())
    }
    async fn precheck(&self, _ctx: &CheckContext) -> Result<(), Refusal> {
        let n = crate::dir::list(&self.path)
            .map_err(|e| Refusal::usage(e.to_string()))?
            .len();
        line("source", format!("{}: a directory of {n} files (each becomes a secret named after its path); read-only at cutover: external", self.path.display()));
        Ok(())
    }
    fn tail(&self, ctx: &TailContext) -> Result<Tailing, String> {
        let t = DirTailer::new(
            self.path.clone(),
            self.url.to_string(),
            ctx.span,
            Arc::clone(&ctx.seal),
        );
        Ok(Tailing {
            fence: Arc::new(t.fence_handle()),
            shared: Arc::new(()),
            tailer: ferry_connect::tailer(move |j, l, s| t.run(j, l, s)),
        })
    }
    fn reader(&self) -> Result<Reader, String> {
        Ok(Reader::Files(Arc::new(Dir {
            name: self.path.display().to_string(),
            root: self.path.clone(),
        })))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A JSON file, as a target: written atomically (temporary file, fsync,
/// rename).
pub struct FileTarget {
    url: StoreUrl,
    path: PathBuf,
}

#[async_trait]
impl Target for FileTarget {
    fn url(&self) -> &StoreUrl {
        &self.url
    }
    fn accepts(&self) -> &'static [DataModel] {
        &[DataModel::Document]
    }
    async fn connect(&self) -> Result<(), String> {
        Ok(())
    }
    async fn precheck(&self, _source: &dyn Source, ctx: &CheckContext) -> Result<(), Refusal> {
        if self.path.exists() && !ctx.force && !ctx.resuming {
            return Err(Refusal::refused(format!("{} already holds a file; copying overwrites it: pass --force to go ahead or choose another target", self.url)));
        }
        line(
            "target",
            format!(
                "{}: written atomically (temporary file, fsync, rename)",
                self.path.display()
            ),
        );
        Ok(())
    }
    fn sink(&self, _ctx: &SinkContext<'_>) -> Result<SharedSink, String> {
        Ok(SharedSink::new(FileSink::new(
            self.path.clone(),
            self.url.to_string(),
        )))
    }
    fn reader(&self, _source: &dyn Source) -> Result<Reader, String> {
        Ok(Reader::Document(Arc::new(FileDoc {
            name: self.path.display().to_string(),
            path: self.path.clone(),
            settle: false,
        })))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct FileDoc {
    name: String,
    path: PathBuf,
    /// A source is read once it parses (a writer may be mid-write).
    settle: bool,
}

#[async_trait]
impl DocumentReader for FileDoc {
    fn name(&self) -> &str {
        &self.name
    }
    fn holder(&self) -> &'static str {
        "document"
    }
    async fn read(&self) -> Result<Option<DocState>, String> {
        if !self.settle && !self.path.exists() {
            return Ok(None);
        }
        let d = if self.settle {
            read_settled(&self.path, DEFAULT_SETTLE)
        } else {
            read(&self.path)
        }
        .map_err(|e| e.to_string())?;
        Ok(Some(DocState {
            bytes: Some(d.bytes),
            json: Some(d.value),
        }))
    }
}

struct Dir {
    name: String,
    root: PathBuf,
}

#[async_trait]
impl FilesReader for Dir {
    fn name(&self) -> &str {
        &self.name
    }
    async fn list(&self) -> Result<Vec<String>, String> {
        Ok(crate::dir::list(&self.root)
            .map_err(|e| e.to_string())?
            .into_keys()
            .collect())
    }
    async fn document(&self, rel: &str) -> Result<serde_json::Value, String> {
        let bytes = crate::dir::document(&self.root, rel).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}/{rel}: {e}", self.name))
    }
}

fn doc_refusal(e: crate::DocError) -> Refusal {
    match e {
        crate::DocError::Write { .. } => Refusal::runtime(e.to_string()),
        _ => Refusal::usage(e.to_string()),
    }
}

/// A JSON file, for `ferry config copy` (written atomically; followed by
/// polling, skipping states caught half-written).
pub struct FilePlace(PathBuf);

#[async_trait]
impl DocumentPlace for FilePlace {
    fn label(&self) -> String {
        self.0.display().to_string()
    }
    fn keeps_bytes(&self) -> bool {
        true
    }
    async fn load(&self) -> Result<Doc, Refusal> {
        let d = read_settled(&self.0, DEFAULT_SETTLE).map_err(doc_refusal)?;
        Ok(Doc {
            bytes: d.bytes,
            value: d.value,
        })
    }
    async fn save(&self, doc: &Doc) -> Result<(), Refusal> {
        crate::write_atomic(&self.0, &doc.bytes).map_err(doc_refusal)
    }
    async fn poll(&self) -> Result<Option<Doc>, Refusal> {
        match read(&self.0) {
            Ok(d) => Ok(Some(Doc {
                bytes: d.bytes,
                value: d.value,
            })),
            Err(crate::DocError::Invalid { .. }) => Ok(None),
            Err(e) => Err(doc_refusal(e)),
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
