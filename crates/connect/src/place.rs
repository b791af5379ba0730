//! Places that hold one whole document (`ferry config copy`), and
//! versioned secrets copied at once (`ferry config copy --versions`).

use crate::Refusal;
use async_trait::async_trait;
use std::any::Any;

/// One whole JSON document: its exact bytes and what they parse to.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    pub bytes: Vec<u8>,
    pub value: serde_json::Value,
}

/// A place holding one document: a file, an etcd key, a Vault secret.
#[async_trait]
pub trait DocumentPlace: Send + Sync {
    /// How messages name it.
    fn label(&self) -> String;
    /// Whether it keeps the document's bytes, not only its JSON.
    fn keeps_bytes(&self) -> bool;
    /// The document; refuses (exit 2) when it is absent or not JSON.
    async fn load(&self) -> Result<Doc, Refusal>;
    /// Writes the document whole, or refuses with nothing written.
    async fn save(&self, doc: &Doc) -> Result<(), Refusal>;
    /// The document now, `None` while it does not parse (caught half
    /// written): what `--follow` polls. Only files can be followed.
    async fn poll(&self) -> Result<Option<Doc>, Refusal> {
        Err(Refusal::usage(
            "--follow needs a JSON file as --from in this build",
        ))
    }
    fn as_any(&self) -> &dyn Any;
}

/// Every versioned secret under a path, copied with its history.
#[async_trait]
pub trait VersionedPlace: Send + Sync {
    fn label(&self) -> String;
    /// Copies every secret with every version and its metadata onto `dst`
    /// (a place of the same connector), then compares them version by
    /// version: (secrets, versions copied, differences).
    async fn copy_to(&self, dst: &dyn VersionedPlace)
        -> Result<(usize, u64, Vec<String>), Refusal>;
    fn as_any(&self) -> &dyn Any;
}

impl Doc {
    /// Parses `bytes` read from `label`; refuses (exit 2) with the line and
    /// column of the first error.
    pub fn parse(label: &str, bytes: Vec<u8>) -> Result<Doc, Refusal> {
        match serde_json::from_slice(&bytes) {
            Ok(value) => Ok(Doc { bytes, value }),
            Err(e) => Err(Refusal::usage(format!(
                "{label} is not valid JSON at line {}, column {}: {}; fix the file",
                e.line(),
                e.column(),
                e.to_string().split(" at line").next().unwrap_or("")
            ))),
        }
    }
}
