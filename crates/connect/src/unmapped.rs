//! Source entries a sink could not map for its target.
//!
//! A mapping sink (Cells' Bolt files into MongoDB) that meets a value the
//! target's reader could not read either does not apply it and does not
//! drop it in silence: it records it here by name. `status` lists them, and
//! the cutover opens nothing while one stands unless the operator accepts
//! it by name.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// One unmapped entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmappedEntry {
    /// How the operator accepts it (`<service>:<path>`).
    pub name: String,
    /// The sentence saying what is wrong with it.
    pub sentence: String,
}

#[derive(Default, Debug)]
pub struct Unmapped(Mutex<BTreeMap<String, String>>);

impl Unmapped {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, String>) -> R) -> R {
        f(&mut self.0.lock().expect("unmapped lock poisoned"))
    }

    pub fn record(&self, e: UnmappedEntry) {
        tracing::warn!(error = %e.sentence, "a source entry could not be mapped; it is not applied");
        self.with(|m| m.insert(e.name, e.sentence));
    }

    /// Whether anything is recorded (cheap; lets a sink skip naming an
    /// entry to clear).
    pub fn is_empty(&self) -> bool {
        self.with(|m| m.is_empty())
    }

    /// The entry named `name` mapped (or was deleted) after all.
    pub fn clear(&self, name: &str) {
        self.with(|m| {
            m.remove(name);
        });
    }

    pub fn list(&self) -> Vec<UnmappedEntry> {
        self.with(|m| {
            m.iter()
                .map(|(name, sentence)| UnmappedEntry {
                    name: name.clone(),
                    sentence: sentence.clone(),
                })
                .collect()
        })
    }
}
