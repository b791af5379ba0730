//! `ferry config copy --from URL --to URL`: one configuration document,
//! copied once and checked byte for byte.
//!
//! A Cells etcd store keeps the whole JSON document as one value at the key
//! its URL path names (`etcd://h:2379/config` is key `config`), exactly the
//! bytes Cells reads and watches; a file target is written atomically; a
//! Vault KV secret holds the document's top-level object. Each place is its
//! connector's [`ferry_connect::place::DocumentPlace`]; `--versions` copies
//! a [`ferry_connect::place::VersionedPlace`] with its history.
//!
//! `--follow` (from a file) polls the file every [`FOLLOW_POLL`] and copies
//! each new state once it parses: a file caught half-written is skipped
//! until a later look finds it whole, so the target never holds a state
//! that does not parse. Polling rather than inotify: it also sees editors
//! that replace the file, network filesystems and bind mounts.

use super::start::runtime;
use crate::cli::ConfigCopyArgs;
use crate::error::CliError;
use ferry_connect::place::{Doc, DocumentPlace};
use ferry_connect::Refusal;
use ferry_core::{ExitCode, StoreUrl};
use std::time::Duration;

/// How often `--follow` looks at the source file: well inside the one
/// second in which a change must reach the target.
pub const FOLLOW_POLL: Duration = Duration::from_millis(50);

fn refusal(r: Refusal) -> CliError {
    CliError::new(r.code, r.message)
}

pub fn copy(a: ConfigCopyArgs) -> Result<(), CliError> {
    let registry = ferry_agent::routes::registry(Default::default());
    let (from_url, to_url) = (StoreUrl::parse(&a.from)?, StoreUrl::parse(&a.to)?);
    let from = registry.document(&from_url).map_err(refusal)?;
    let to = registry.document(&to_url).map_err(refusal)?;
    if from.label() == to.label() {
        return Err(CliError::new(
            ExitCode::Usage,
            format!(
                "--from and --to are the same store ({}); give a different --to",
                to.label()
            ),
        ));
    }
    if a.versions {
        let f = registry.versioned(&from_url).map_err(refusal)?;
        let t = registry.versioned(&to_url).map_err(refusal)?;
        return runtime()?.block_on(async {
            let (secrets, versions, diffs) = f.copy_to(t.as_ref()).await.map_err(refusal)?;
            println!(
                "copied {secrets} secrets ({versions} versions) from {} to {}; compared version by version: {} differences",
                f.label(),
                t.label(),
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
        });
    }
    runtime()?.block_on(async {
        let doc = from.load().await.map_err(refusal)?;
        to.save(&doc).await.map_err(refusal)?;
        let back = to.load().await.map_err(refusal)?;
        // Vault keeps the JSON, not its layout: only JSON equality applies.
        let byte_exact = from.keeps_bytes() && to.keeps_bytes();
        let (bytes, json) = (
            !byte_exact || back.bytes == doc.bytes,
            back.value == doc.value,
        );
        println!(
            "copied {} bytes from {} to {}; read back: bytes {}, JSON {}",
            doc.bytes.len(),
            from.label(),
            to.label(),
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
                format!("the copy at {} does not match its source", to.label()),
            ));
        }
        if a.follow {
            follow(from.as_ref(), to.as_ref(), doc).await?;
        }
        Ok(())
    })
}

/// Copies every new, whole state of the source file until SIGINT/SIGTERM.
async fn follow(
    from: &dyn DocumentPlace,
    to: &dyn DocumentPlace,
    mut last: Doc,
) -> Result<(), CliError> {
    // Refuses a place that cannot be followed before anything is said.
    from.poll().await.map_err(refusal)?;
    println!("following {}; Ctrl-C stops", from.label());
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
        // Half-written: look again next tick.
        let Some(doc) = from.poll().await.map_err(refusal)? else {
            continue;
        };
        if doc.bytes == last.bytes {
            continue;
        }
        to.save(&doc).await.map_err(refusal)?;
        copies += 1;
        last = doc;
    }
    println!("stopped following after {copies} changes");
    Ok(())
}
