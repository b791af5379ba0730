//! The comparisons of secrets and whole documents: small enough to read
//! whole, so they are compared entry by entry without digests.

use super::{Comparison, DocumentReader, FilesReader, KvReader, SecretsReader};
use std::collections::{BTreeMap, BTreeSet};

/// Secrets version by version, metadata included.
pub async fn secrets(
    s: &dyn SecretsReader,
    t: &dyn SecretsReader,
    source_name: &str,
    target_name: &str,
) -> Result<Comparison, String> {
    let paths = s.list().await?;
    let target_paths = t.list().await?;
    let mut c = Comparison::default();
    let rels: BTreeSet<&str> = paths.iter().map(String::as_str).collect();
    for p in &target_paths {
        if !rels.contains(p.as_str()) {
            c.note(format!("{}: on the target only", t.absolute(p)));
        }
    }
    for p in &paths {
        let path = s.absolute(p);
        let (a, b) = (s.metadata(p).await?, t.metadata(p).await?);
        let (Some(a), Some(b)) = (a, b) else {
            c.note(format!("{path}: present on one side only"));
            continue;
        };
        c.compared += a.current_version;
        if a.current_version != b.current_version {
            c.note(format!(
                "{path}: current version {} vs {}",
                a.current_version, b.current_version
            ));
        }
        if (a.max_versions, a.cas_required, &a.delete_version_after)
            != (b.max_versions, b.cas_required, &b.delete_version_after)
        {
            c.note(format!(
                "{path}: max_versions/cas_required/delete_version_after differ"
            ));
        }
        if a.custom != b.custom {
            c.note(format!("{path}: custom_metadata differs"));
        }
        for (v, state) in &a.versions {
            let Some(other) = b.versions.get(v) else {
                c.note(format!("{path} v{v}: missing on the target"));
                continue;
            };
            if state != other {
                c.note(format!("{path} v{v}: deleted/destroyed state differs"));
            } else if *state == (false, false)
                && s.read_version(p, *v).await? != t.read_version(p, *v).await?
            {
                c.note(format!("{path} v{v}: data differs"));
            }
        }
    }
    c.summary = format!(
        "compared {} secrets ({} versions) of {source_name} with {target_name} version by version, metadata included: {} differences",
        paths.len(),
        c.compared,
        c.differences
    );
    Ok(c)
}

/// The source's document, which must exist.
async fn source_document(s: &dyn DocumentReader) -> Result<super::DocState, String> {
    s.read()
        .await?
        .ok_or_else(|| format!("{}: the source document is gone", s.name()))
}

/// A document against its copy: JSON equality always, exact bytes where
/// the target keeps bytes.
pub async fn document(
    s: &dyn DocumentReader,
    t: &dyn DocumentReader,
    target_name: &str,
) -> Result<Comparison, String> {
    let src = source_document(s).await?;
    let how = t.holder();
    let (bytes, json, how) = match t.read().await? {
        Some(d) => (
            d.bytes.as_ref().map(|b| Some(b) == src.bytes.as_ref()),
            d.json.is_some() && d.json == src.json,
            how.to_string(),
        ),
        None => (Some(false), false, format!("{how} (absent)")),
    };
    let equal = json && bytes.unwrap_or(true);
    Ok(Comparison {
        compared: 1,
        differences: u64::from(!equal),
        details: if equal {
            Vec::new()
        } else {
            vec![format!("{target_name}: the {how} differs from the source")]
        },
        summary: format!(
            "compared {} with the {how} at {target_name}: bytes {}, JSON {}",
            s.name(),
            match bytes {
                None => "not compared (the target keeps JSON, not layout)",
                Some(true) => "identical",
                Some(false) => "DIFFER",
            },
            if json { "equal" } else { "DIFFERS" }
        ),
        ..Default::default()
    })
}

/// A document's leaves against the keys under a prefix (`/a/b` → key
/// `<prefix>/a/b`).
pub async fn leaves(
    s: &dyn DocumentReader,
    t: &dyn KvReader,
    target_name: &str,
) -> Result<Comparison, String> {
    let src = source_document(s).await?;
    let json = src
        .json
        .ok_or_else(|| format!("{}: not a JSON document", s.name()))?;
    let want = crate::model::leaves(&json);
    let mut have: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut cursor = t.cursor();
    while let Some(page) = cursor.next_page().await? {
        for kv in page {
            if kv.suffix.first() == Some(&b'/') {
                have.insert(String::from_utf8_lossy(&kv.suffix).into_owned(), kv.value);
            }
        }
    }
    let mut c = Comparison {
        compared: want.len() as u64,
        ..Default::default()
    };
    for (k, v) in &want {
        if have.get(k) != Some(v) {
            c.note(format!("{k}: missing or different on the target"));
        }
    }
    for k in have.keys().filter(|k| !want.contains_key(*k)) {
        c.note(format!("{k}: on the target only"));
    }
    c.summary = format!(
        "compared {} leaves of {} with the keys under {target_name}: {} differences",
        want.len(),
        s.name(),
        c.differences
    );
    Ok(c)
}

/// Each file of a directory against the current version of its secret.
pub async fn files(
    s: &dyn FilesReader,
    t: &dyn SecretsReader,
    target_name: &str,
) -> Result<Comparison, String> {
    let files = s.list().await?;
    let names: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    let mut c = Comparison::default();
    for rel in &files {
        let want = s.document(rel).await?;
        let got = t.current(rel).await?;
        if got.map(serde_json::Value::Object) != Some(want) {
            c.note(format!("{rel}: missing or different in {target_name}"));
        }
        c.compared += 1;
    }
    for p in t.list().await? {
        if !names.contains(p.as_str()) {
            c.note(format!("{}: in {target_name} only", t.absolute(&p)));
        }
    }
    c.summary = format!(
        "compared {} files of {} with the secrets of {target_name}: {} differences",
        c.compared,
        s.name(),
        c.differences
    );
    Ok(c)
}
