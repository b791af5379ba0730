//! Routes: which source feeds which targets, over which shards.
//!
//! `ferry start` takes `--source` and `--target` lists. One source feeds
//! every target; otherwise sources and targets pair up in the order given
//! (`--source A --source B --target A' --target B'`). A composite source
//! (`cells:///home`) stands alone and expands, through its connector, into
//! routes of other connectors. Each route gets its own span of the
//! journal's shards (as many as its source asks for: a document needs
//! one), so every source keeps its own order, checkpoint and fence in one
//! journal.
//!
//! What can go where is derived from the connectors' data models
//! (`ferry_connect::check_pair`); nothing here knows a store.

use ferry_connect::{Options, Registry, Source, Target};
use ferry_core::{ShardSpan, StoreUrl};
use ferry_journal::seal::SealKey;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The key file sealing secret values in the journal, in the journal dir.
pub const SEAL_KEY_FILE: &str = "journal.key";

/// One source and the targets it feeds.
#[derive(Clone)]
pub struct Route {
    pub source: Arc<dyn Source>,
    pub targets: Vec<Arc<dyn Target>>,
    pub span: ShardSpan,
}

/// The routes of a migration, and what the operator does after its
/// cutover (a composite source's steps).
pub struct Plan {
    pub routes: Vec<Route>,
    pub next_steps: Vec<String>,
}

/// The registry of this build with a run's connector options.
pub fn registry(options: Options) -> Registry {
    ferry_stores::registry().with_options(options)
}

/// Connector options from the flags that name them (`--cells.prefixes`,
/// `--kafka.publish-secrets`).
pub fn connector_params(
    cells_prefixes: Option<&str>,
    kafka_publish_secrets: bool,
) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    if let Some(v) = cells_prefixes {
        p.insert(
            ferry_stores::CELLS_PREFIXES_PARAM.to_string(),
            v.to_string(),
        );
    }
    if kafka_publish_secrets {
        p.insert(
            ferry_stores::KAFKA_PUBLISH_SECRETS_PARAM.to_string(),
            "true".into(),
        );
    }
    p
}

/// The values `--cells.prefixes` takes.
pub fn cells_prefix_values() -> &'static [&'static str] {
    ferry_stores::CELLS_PREFIXES
}

type Pair = (Arc<dyn Source>, Vec<Arc<dyn Target>>);

/// Pairs sources with targets; see the module doc.
pub fn plan(
    registry: &Registry,
    sources: &[StoreUrl],
    targets: &[StoreUrl],
    shards: u32,
) -> Result<Plan, String> {
    if sources.is_empty() || targets.is_empty() {
        return Err("give at least one --source and one --target".into());
    }
    let mut pairs: Vec<Pair> = Vec::new();
    let mut next_steps = Vec::new();
    let mut checked = true;
    let all_targets = |registry: &Registry| -> Result<Vec<Arc<dyn Target>>, String> {
        targets.iter().map(|t| registry.target(t)).collect()
    };
    if let [one] = sources {
        if let Some(expansion) = registry.expand(one, targets) {
            let e = expansion?;
            next_steps = e.next_steps;
            pairs.extend(e.routes.into_iter().map(|p| (p.source, p.targets)));
            checked = false;
        } else {
            pairs.push((registry.source(one)?, all_targets(registry)?));
        }
    } else if let Some(c) = sources.iter().find(|s| registry.is_composite(s)) {
        return Err(format!("{c}: a composite source stands alone: give it as the only --source, with a mongodb://, an etcd:// and a vault:// --target"));
    } else if sources.len() == targets.len() {
        for (s, t) in sources.iter().zip(targets) {
            pairs.push((registry.source(s)?, vec![registry.target(t)?]));
        }
    } else {
        return Err(format!(
            "{} sources and {} targets: give one source for any number of targets, or as many targets as sources (paired in order)",
            sources.len(),
            targets.len()
        ));
    }
    let mut first = 0u32;
    let mut routes = Vec::new();
    for (source, targets) in pairs {
        for t in &targets {
            if checked {
                ferry_connect::check_pair(registry, source.as_ref(), t.as_ref())?;
            }
            if t.url().to_string() == source.url().to_string() {
                return Err(format!(
                    "{} is both a source and a target; give the target a different store or prefix",
                    t.url()
                ));
            }
        }
        let count = source.shards(shards);
        routes.push(Route {
            source,
            targets,
            span: ShardSpan { first, count },
        });
        first += count;
    }
    // Routes may share a target that keeps each route's writes apart
    // (MongoDB: namespaces and checkpoints per route). Others are one route's.
    let mut names: Vec<String> = routes
        .iter()
        .flat_map(|r| r.targets.iter())
        .filter(|t| !t.shared())
        .map(|t| t.url().to_string())
        .collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "{} is the target of two sources; give each source its own target",
            w[0]
        ));
    }
    Ok(Plan { routes, next_steps })
}

/// The total shard count of a plan.
pub fn shard_count(routes: &[Route]) -> u32 {
    routes.iter().map(|r| r.span.count).sum()
}

/// The key sealing secrets in the journal at `dir` (created 0600 on first use).
pub fn seal_key(dir: &Path) -> Result<Arc<SealKey>, String> {
    SealKey::load_or_create(&dir.join(SEAL_KEY_FILE))
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// The continuous verifier of a route's target (see
/// [`ferry_connect::verify::continuous`]): by ranges where both sides read
/// as keys and values or as documents with range reads, else the whole
/// store as one range (Vault, JSON files, the keyring, Cells' Bolt stores
/// mapped to their documents: the entries Cells cannot read are listed by
/// the sinks as they meet them, so the cutover lists them even when it
/// compares nothing), except for an event stream as target (a topic is
/// checked whole, for its ends, inside the window) and a source that asks
/// not to be compared in the background ([`Source::background_compare`]:
/// a Kafka topic, replayed by its reader).
pub fn range_verifier(
    source: &dyn Source,
    target: &dyn Target,
) -> Option<Arc<ferry_connect::verify::continuous::RangeVerifier>> {
    use ferry_connect::Reader;
    if let Some(v) = ranged_verifier(source, target) {
        return Some(v);
    }
    let (s, t) = (source.reader().ok()?, target.reader(source).ok()?);
    if matches!(t, Reader::Events(_)) || !source.background_compare() {
        return None;
    }
    Some(Arc::new(
        ferry_connect::verify::continuous::RangeVerifier::over(Box::new(
            ferry_connect::verify::continuous::Whole {
                source_name: source.url().to_string(),
                source: s,
                target_name: target.url().to_string(),
                target: t,
                options: ferry_connect::verify::CompareOptions {
                    ttl_tolerance_s: crate::config::DEFAULT_VERIFY_TTL_TOLERANCE_S,
                },
            },
        )),
    ))
}

/// The verifier by ranges, where both sides have range reads: what
/// `ferry verify` resumes.
pub fn ranged_verifier(
    source: &dyn Source,
    target: &dyn Target,
) -> Option<Arc<ferry_connect::verify::continuous::RangeVerifier>> {
    use ferry_connect::Reader;
    match (source.reader().ok()?, target.reader(source).ok()?) {
        (Reader::KeyValue(s), Reader::KeyValue(t)) if s.range_reads() && t.range_reads() => Some(
            Arc::new(ferry_connect::verify::continuous::RangeVerifier::new(
                s,
                t,
                crate::config::DEFAULT_VERIFY_TTL_TOLERANCE_S,
            )),
        ),
        (Reader::Documents(s), Reader::Documents(t)) if s.range_reads() && t.range_reads() => Some(
            Arc::new(ferry_connect::verify::continuous::RangeVerifier::over(
                Box::new(ferry_connect::verify::doc_ranges::DocRanges::new(s, t)),
            )),
        ),
        _ => None,
    }
}

/// Compares a route's source with one of its targets through their readers.
pub async fn compare(
    source: &dyn Source,
    target: &dyn Target,
    ttl_tolerance_s: i64,
) -> Result<ferry_connect::Comparison, String> {
    let (s, t) = (source.reader()?, target.reader(source)?);
    ferry_connect::verify::compare(
        &source.url().to_string(),
        &s,
        &target.url().to_string(),
        &t,
        ferry_connect::verify::CompareOptions { ttl_tolerance_s },
    )
    .await
}
