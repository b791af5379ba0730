//! `ferry start` pre-checks: everything that can be known before any data
//! moves. Each check prints one line; the first refusal ends the run with
//! one sentence and exit code 3 (2 for bad input), and nothing is written.

use crate::error::CliError;
use ferry_core::{ExitCode, StoreKind, StoreUrl};
use ferry_etcd::{EtcdError, EtcdStore, TARGET_MAX_REQUEST_BYTES};
use std::fs::File;
use std::path::Path;

/// Journals smaller than this much free space are refused: a snapshot of a
/// typical etcd (a few hundred MB at most) plus compaction headroom.
const MIN_FREE_JOURNAL_BYTES: u64 = 1 << 30;

pub fn line(what: &str, text: impl AsRef<str>) {
    println!("pre-check  {what:<8} {}", text.as_ref());
}

pub fn refused(e: EtcdError) -> CliError {
    CliError::new(ExitCode::Refused, e.to_string())
}

/// What the checks learned that `start` needs.
pub struct Checked {
    pub source: EtcdStore,
}

/// Checks the stores. `resuming`: the journal already holds this migration
/// (the target then holds Ferry's own copy and need not be empty).
pub async fn stores(
    source: &StoreUrl,
    targets: &[StoreUrl],
    force: bool,
    resuming: bool,
    external_read_only: bool,
) -> Result<Checked, CliError> {
    for u in std::iter::once(source).chain(targets) {
        if u.kind() != StoreKind::Etcd {
            return Err(CliError::new(
                ExitCode::Usage,
                format!(
                    "{u}: this build migrates etcd to etcd; {} stores arrive with later releases",
                    u.kind().name()
                ),
            ));
        }
        if let StoreUrl::Etcd { prefix, .. } = u {
            if prefix.is_empty() {
                return Err(CliError::new(
                    ExitCode::Usage,
                    format!("{u} names no key prefix; Ferry copies one prefix, e.g. etcd://127.0.0.1:2379/app"),
                ));
            }
        }
    }
    let src = EtcdStore::connect(source).await.map_err(refused)?;
    let version = src.server_version().await.map_err(refused)?;
    let count = src.count_prefix().await.map_err(refused)?;
    let largest = src.max_value_len_in_prefix().await.map_err(refused)?;
    line(
        "source",
        format!(
            "{source}: reachable, credentials accepted, etcd {version}, {count} keys{}",
            largest
                .as_ref()
                .map(|l| format!(", largest value {} B", l.value_bytes))
                .unwrap_or_default()
        ),
    );
    let auth = src.auth_enabled().await.map_err(refused)?;
    if external_read_only {
        line("source", "read-only at cutover: external (you stop the writers; Ferry refuses to open the target if it sees a write after the fence)");
    } else if auth {
        line("source", "read-only at cutover: auth is on; write permission will be taken from every role but Ferry's and given back on abort");
    } else {
        return Err(CliError::new(
            ExitCode::Refused,
            format!("{source} has authentication disabled, so Ferry cannot make it read-only at cutover; enable etcd auth or pass --source.read-only=external and stop the writers yourself"),
        ));
    }
    for t in targets {
        let tgt = EtcdStore::connect(t).await.map_err(refused)?;
        if src.overlaps(&tgt) {
            return Err(CliError::new(
                ExitCode::Usage,
                format!("{source} and {t} overlap on the same cluster: Ferry would copy its own writes; choose prefixes where neither contains the other"),
            ));
        }
        let tv = tgt.server_version().await.map_err(refused)?;
        let tcount = tgt.count_prefix().await.map_err(refused)?;
        if tcount > 0 && !force && !resuming {
            return Err(CliError::new(
                ExitCode::Refused,
                format!("{t} already holds {tcount} keys; copying overwrites them and removes those the source lacks: pass --force to go ahead or choose an empty prefix"),
            ));
        }
        if let Some(l) = &largest {
            // A put carries the key and value plus a few dozen bytes of framing.
            if l.value_bytes + l.key.len() + 512 > TARGET_MAX_REQUEST_BYTES {
                return Err(CliError::new(
                    ExitCode::Refused,
                    format!(
                        "the source key `{}` holds {} bytes, more than {t} accepts in one request ({TARGET_MAX_REQUEST_BYTES} bytes); raise --max-request-bytes on the target etcd or shrink the value",
                        String::from_utf8_lossy(&l.key),
                        l.value_bytes
                    ),
                ));
            }
        }
        let state = match (tcount, resuming) {
            (_, true) => "holds this migration's copy (resuming)".to_string(),
            (0, _) => "empty".to_string(),
            (n, _) => format!("holds {n} keys: --force given, they will be overwritten"),
        };
        line("target", format!("{t}: reachable, credentials accepted, etcd {tv}, {state}; values fit its {TARGET_MAX_REQUEST_BYTES}-byte request limit"));
    }
    Ok(Checked { source: src })
}

/// On resume: is the journaled revision still in the source's history?
/// Says so in one line; refuses (exit 3) when re-snapshots are off.
pub async fn resume_point(
    source: &EtcdStore,
    source_name: &str,
    dir: &Path,
    resnapshot: bool,
) -> Result<(), CliError> {
    use ferry_journal::Journal;
    let Ok(j) = ferry_journal_rocks::RocksJournal::open(
        dir,
        ferry_journal_rocks::OpenMode::ReadOnly,
        ferry_journal::PersistPolicy::Never,
    ) else {
        return Ok(());
    };
    let Some(pos) = j.source_checkpoint(source_name)? else {
        line("source", "no snapshot journaled yet: the agent takes one");
        return Ok(());
    };
    let resume = pos.order as i64 + 1;
    let mut client = source.client();
    let opts = etcd_client::GetOptions::new()
        .with_count_only()
        .with_revision(resume);
    match client.get(source.prefix(), Some(opts)).await {
        Ok(_) => {
            line(
                "source",
                format!("resuming from journaled revision {}", pos.order),
            );
            Ok(())
        }
        Err(e) if e.to_string().contains("compacted") => {
            if resnapshot {
                line("source", format!("{source_name} was compacted past journaled revision {}: the agent takes a new snapshot and the target converges to it", pos.order));
                Ok(())
            } else {
                Err(CliError::new(
                    ExitCode::Refused,
                    format!("{source_name} was compacted past journaled revision {}, so the changes since are lost to Ferry; drop --no-resnapshot to take a new snapshot", pos.order),
                ))
            }
        }
        // Head below the resume revision (nothing new) or a passing error:
        // the agent handles both.
        Err(_) => Ok(()),
    }
}

/// Whether a live agent holds the journal's lock (without creating anything).
pub fn agent_running(dir: &Path) -> bool {
    match File::open(dir.join(ferry_journal_rocks::dir::LOCK_FILE)) {
        Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// Checks the journal directory without creating it.
pub fn journal(dir: &Path) -> Result<(), CliError> {
    ferry_journal_rocks::dir::inspect(dir)?;
    if agent_running(dir) {
        return Err(ferry_journal::JournalError::Locked {
            dir: dir.display().to_string(),
        }
        .into());
    }
    // The nearest existing ancestor must be writable by us.
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p.to_path_buf(),
            _ => {
                probe = std::path::PathBuf::from(".");
                break;
            }
        }
    }
    if nix::unistd::access(&probe, nix::unistd::AccessFlags::W_OK).is_err() {
        return Err(ferry_journal::JournalError::NotWritable {
            dir: dir.display().to_string(),
            reason: format!("permission denied on {}", probe.display()),
        }
        .into());
    }
    let free = nix::sys::statvfs::statvfs(&probe)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(u64::MAX);
    if free < MIN_FREE_JOURNAL_BYTES {
        return Err(CliError::new(
            ExitCode::Refused,
            format!(
                "only {} MiB are free for the journal in {}; free at least {} MiB or choose another --journal",
                free >> 20,
                probe.display(),
                MIN_FREE_JOURNAL_BYTES >> 20
            ),
        ));
    }
    line(
        "journal",
        format!(
            "{}: writable, not in use, {} GiB free",
            dir.display(),
            free >> 30
        ),
    );
    Ok(())
}

/// Pre-checks of a route whose source is a JSON file or a Vault path.
pub async fn config_route(
    route: &ferry_agent::routes::Route,
    force: bool,
    resuming: bool,
) -> Result<(), CliError> {
    use super::config::vault_error;
    let source = &route.source;
    let doc = match source {
        StoreUrl::File { path } if path.is_dir() => {
            let n = ferry_file::dir::list(path)
                .map_err(|e| CliError::new(ExitCode::Usage, e.to_string()))?
                .len();
            line("source", format!("{}: a directory of {n} files (each becomes a secret named after its path); read-only at cutover: external", path.display()));
            None
        }
        StoreUrl::File { path } => {
            let doc = ferry_file::read_settled(path, ferry_file::DEFAULT_SETTLE)
                .map_err(|e| CliError::new(ExitCode::Usage, e.to_string()))?;
            line(
                "source",
                format!(
                    "{}: a JSON document of {} bytes; read-only at cutover: external (stop its writers; Ferry refuses to open the target if the file changes after the fence)",
                    path.display(),
                    doc.bytes.len()
                ),
            );
            Some(doc)
        }
        StoreUrl::Vault { .. } => {
            let s = ferry_vault::VaultStore::connect(source)
                .await
                .map_err(vault_error)?;
            let n = s.list_all().await.map_err(vault_error)?.len();
            line("source", format!("{source}: reachable, token accepted, KV version 2, {n} secrets; read-only at cutover: external (stop its writers; Ferry refuses to open the target if a secret changes after the fence)"));
            None
        }
        other => {
            return Err(CliError::new(
                ExitCode::Usage,
                format!("{other}: not a configuration source"),
            ))
        }
    };
    for t in &route.targets {
        let occupied = |what: String| {
            CliError::new(
                ExitCode::Refused,
                format!("{t} already holds {what}; copying overwrites it: pass --force to go ahead or choose another target"),
            )
        };
        match t {
            StoreUrl::Etcd { .. } => {
                let store = EtcdStore::connect(t).await.map_err(refused)?;
                let size = doc.as_ref().map_or(0, |d| d.bytes.len());
                if size + store.prefix().len() + 512 > TARGET_MAX_REQUEST_BYTES {
                    return Err(CliError::new(
                        ExitCode::Refused,
                        format!("the document is {size} bytes, more than {t} accepts in one request ({TARGET_MAX_REQUEST_BYTES} bytes); raise --max-request-bytes on that etcd"),
                    ));
                }
                let n = store.count_prefix().await.map_err(refused)?;
                if n > 0 && !force && !resuming {
                    return Err(occupied(format!("{n} keys under its prefix")));
                }
                line(
                    "target",
                    format!("{t}: reachable, the document fits its request limit"),
                );
            }
            StoreUrl::File { path } => {
                if path.exists() && !force && !resuming {
                    return Err(occupied("a file".into()));
                }
                line(
                    "target",
                    format!(
                        "{}: written atomically (temporary file, fsync, rename)",
                        path.display()
                    ),
                );
            }
            StoreUrl::Vault { .. } => {
                let store = ferry_vault::VaultStore::connect(t)
                    .await
                    .map_err(vault_error)?;
                if let Some(d) = &doc {
                    if !d.value.is_object() {
                        return Err(CliError::new(
                            ExitCode::Usage,
                            format!(
                                "{t}: a Vault secret holds a JSON object, and {source} is not one"
                            ),
                        ));
                    }
                    if d.bytes.len() + 64 > ferry_vault::MAX_REQUEST_BYTES {
                        return Err(CliError::new(
                            ExitCode::Refused,
                            format!("the document is {} bytes, more than Vault accepts in one request ({} bytes by default); raise max_request_size in its listener", d.bytes.len(), ferry_vault::MAX_REQUEST_BYTES),
                        ));
                    }
                }
                let n = store.list_all().await.map_err(vault_error)?.len();
                if n > 0 && !force && !resuming {
                    return Err(occupied(format!("{n} secrets")));
                }
                line(
                    "target",
                    format!("{t}: reachable, token accepted, KV version 2, {n} secrets"),
                );
            }
            other => {
                return Err(CliError::new(
                    ExitCode::Usage,
                    format!("{other}: not a configuration target"),
                ))
            }
        }
    }
    Ok(())
}

fn mongo_refused(e: ferry_mongo::MongoError) -> CliError {
    let code = if matches!(e, ferry_mongo::MongoError::MalformedUri { .. }) {
        ExitCode::Usage
    } else {
        ExitCode::Refused
    };
    CliError::new(code, e.to_string())
}

/// Pre-checks of a MongoDB → MongoDB route.
pub async fn mongo_route(
    route: &ferry_agent::routes::Route,
    force: bool,
    resuming: bool,
    external_read_only: bool,
) -> Result<(), CliError> {
    let src = ferry_mongo::MongoStore::connect(&route.source)
        .await
        .map_err(mongo_refused)?;
    src.check_change_streams().map_err(mongo_refused)?;
    if external_read_only {
        line("source", "read-only at cutover: external (you stop the writers; Ferry refuses to open the target if it sees a write after the fence)");
    } else {
        ferry_mongo::readonly::check_write_block(&src)
            .await
            .map_err(mongo_refused)?;
        line("source", "read-only at cutover: setUserWriteBlockMode (Ferry's user needs bypassWriteBlockingMode)");
    }
    for t in &route.targets {
        let tgt = ferry_mongo::MongoStore::connect(t)
            .await
            .map_err(mongo_refused)?;
        let namespaces = ferry_mongo::precheck(&src, &tgt, force || resuming)
            .await
            .map_err(mongo_refused)?;
        line(
            "source",
            format!(
                "{}: reachable, change streams available, {} namespaces selected",
                route.source,
                namespaces.len()
            ),
        );
        oplog_window(&src, &namespaces).await?;
        line(
            "target",
            format!("{t}: reachable; documents fit its size limit"),
        );
        protection(Some(&route.source), t, &tgt).await?;
    }
    Ok(())
}

/// The pre-check's line on whether a MongoDB target stays write-blocked
/// during the sync (the agent decides the same way at start).
async fn protection(
    source: Option<&StoreUrl>,
    t: &StoreUrl,
    tgt: &ferry_mongo::MongoStore,
) -> Result<(), CliError> {
    // Cells routes share one target: say it once.
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    {
        let mut said = SAID.lock().expect("pre-check lock poisoned");
        if said.contains(&t.to_string()) {
            return Ok(());
        }
        said.push(t.to_string());
    }
    let hosts = |u: &StoreUrl| match u {
        StoreUrl::Mongo { hosts, .. } => Some(hosts.clone()),
        _ => None,
    };
    if source.and_then(hosts).is_some_and(|h| hosts(t) == Some(h)) {
        line("target", format!("{t}: not write-protected during the sync: it shares the source's deployment, which a deployment-wide write block would stop; the cutover's verification finds stray writes"));
        return Ok(());
    }
    let p = ferry_mongo::readonly::target_protection(tgt)
        .await
        .map_err(mongo_refused)?;
    line("target", format!("{t}: {}", p.describe()));
    Ok(())
}

/// Pre-checks of a Cells service route: the Bolt file reads, the target's
/// collections for that service are empty (or `--force`).
pub async fn cells_route(
    route: &ferry_agent::routes::Route,
    force: bool,
    resuming: bool,
) -> Result<(), CliError> {
    let StoreUrl::Bolt { path } = &route.source else {
        return Ok(());
    };
    let service = route.mapping.expect("a Cells route has a mapping");
    let p = path.clone();
    let head =
        tokio::task::spawn_blocking(move || ferry_bolt::BoltFile::open(&p).and_then(|f| f.head()))
            .await
            .map_err(|e| CliError::new(ExitCode::Runtime, e.to_string()))?
            .map_err(|e| CliError::new(ExitCode::Usage, e.to_string()))?;
    for t in &route.targets {
        let tgt = ferry_mongo::MongoStore::connect(t)
            .await
            .map_err(mongo_refused)?;
        let db = ferry_agent::routes::mongo_db(t);
        let namespaces: Vec<ferry_mongo::Namespace> = service
            .collections(&route.map_opts)
            .into_iter()
            .map(|c| ferry_mongo::Namespace::new(db.clone(), c))
            .collect();
        // A database written for a Cells of the other naming: a Cells
        // reads one set of names, so mixing them loses half the data.
        for (naming, coll) in route.map_opts.other_namings(service) {
            let ns = ferry_mongo::Namespace::new(db.clone(), coll);
            let n = tgt.estimated_count(&ns).await.map_err(mongo_refused)?;
            if n > 0 {
                return Err(CliError::new(
                    ExitCode::Refused,
                    format!(
                        "{t}: {ns} holds {n} documents named as --cells.prefixes {} writes them, and this migration writes {} (--cells.prefixes {}); a Cells release reads one naming only, so migrate into another database, or choose the naming of the Cells that will read it with --cells.prefixes",
                        naming.as_str(),
                        namespaces.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                        route.map_opts.prefixes.as_str()
                    ),
                ));
            }
        }
        tgt.check_target_empty(&namespaces, force || resuming)
            .await
            .map_err(mongo_refused)?;
        line(
            "source",
            format!(
                "{} ({}): a Bolt file at transaction {}; read-only at cutover: its lock, which Ferry can only take once Cells has stopped",
                path.display(),
                service.name(),
                head.txid
            ),
        );
        line(
            "target",
            format!(
                "{t}: reachable; {} empty; collection names as --cells.prefixes {} ({}), with the indexes Cells declares",
                namespaces
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                route.map_opts.prefixes.as_str(),
                match route.map_opts.prefixes {
                    ferry_cells::Prefixes::V4 => "later Cells v4; give --cells.prefixes v4-early for a release that names activity, chat and versions collections bare",
                    ferry_cells::Prefixes::V4Early => "earlier Cells v4: activity, chat and versions bare",
                    ferry_cells::Prefixes::None => "every collection bare",
                }
            ),
        );
        protection(None, t, &tgt).await?;
    }
    Ok(())
}

/// Documents per second a copy is assumed to make when estimating its
/// duration against the oplog window (the slowest figure measured here,
/// SecantusDB through the whole pipeline, rounded down).
const ASSUMED_COPY_DOCS_PER_S: u64 = 5_000;

/// The source's oplog window against the copy's estimated duration, where
/// the server reports an oplog (`local.oplog.rs`). A window shorter than
/// twice the estimate is refused: the change stream would lose its resume
/// point before the copy ends, and Ferry would copy again, forever.
async fn oplog_window(
    src: &ferry_mongo::MongoStore,
    namespaces: &[ferry_mongo::Namespace],
) -> Result<(), CliError> {
    use mongodb::bson::{doc, Document};
    let mut docs = 0u64;
    for ns in namespaces {
        docs += src.estimated_count(ns).await.unwrap_or(0);
    }
    let estimate_s = docs / ASSUMED_COPY_DOCS_PER_S + 1;
    let oplog = src
        .client()
        .database("local")
        .collection::<Document>("oplog.rs");
    let edge = |dir: i32| {
        let oplog = oplog.clone();
        async move {
            oplog
                .find_one(doc! {})
                .sort(doc! {"$natural": dir})
                .await
                .ok()
                .flatten()
                .and_then(|d| d.get_timestamp("ts").ok())
        }
    };
    match (edge(1).await, edge(-1).await) {
        (Some(first), Some(last)) => {
            let window = u64::from(last.time.saturating_sub(first.time));
            // An oplog that has not wrapped yet loses nothing: its window
            // is its age, not a limit.
            let stats = src
                .client()
                .database("local")
                .run_command(doc! {"collStats": "oplog.rs"})
                .await
                .ok();
            let num = |d: &Document, k: &str| {
                d.get(k).and_then(|v| match v {
                    mongodb::bson::Bson::Int32(n) => Some(i64::from(*n)),
                    mongodb::bson::Bson::Int64(n) => Some(*n),
                    mongodb::bson::Bson::Double(f) => Some(*f as i64),
                    _ => None,
                })
            };
            let full = stats.as_ref().is_some_and(|d| {
                matches!((num(d, "size"), num(d, "maxSize")), (Some(s), Some(m)) if m > 0 && s * 10 >= m * 9)
            });
            if full && window < 2 * estimate_s {
                return Err(CliError::new(
                    ExitCode::Refused,
                    format!("{}'s oplog spans {window} s, less than twice the copy's estimated {estimate_s} s ({docs} documents at {ASSUMED_COPY_DOCS_PER_S}/s): the change stream could lose its resume point during the copy; enlarge the oplog (replSetResizeOplog) first", src.name()),
                ));
            }
            let state = if full { "full" } else { "not yet wrapped" };
            line("source", format!("oplog window {window} s ({state}), copy estimated at {estimate_s} s for {docs} documents"));
        }
        _ => line("source", format!("oplog window not reported by the server; copy estimated at {estimate_s} s for {docs} documents")),
    }
    Ok(())
}
