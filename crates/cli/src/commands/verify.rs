//! `ferry verify --source URL --target URL`: compares a source with its
//! copy the way Ferry copies it and lists what differs.
//!
//! Where both sides read by ranges (etcd prefixes, MongoDB namespaces by
//! `_id`) the comparison is the continuous verifier's, range by range
//! ([`RangeVerifier::verify_all`]), and resumable: the ranges as cut and
//! those found equal are saved (at most a second apart) in a progress file
//! per source and target, so a `verify` interrupted by a kill, a lost
//! connection or Ctrl-C compares, when run again, only the ranges not yet
//! found equal; `--restart` compares everything. A run that finishes
//! removes its file. Other pairs (JSON documents, Vault paths version by
//! version, Cells' mapped stores, a topic's events) are compared whole.

use super::start::runtime;
use crate::cli::VerifyArgs;
use crate::error::CliError;
use ferry_agent::routes;
use ferry_connect::verify::continuous::{FullCheck, Progress, RangeVerifier, RANGE_KEYS};
use ferry_connect::verify::kv::detail_line;
use ferry_connect::Comparison;
use ferry_core::{ExitCode, StoreUrl};
use std::path::{Path, PathBuf};

pub fn run(a: VerifyArgs) -> Result<(), CliError> {
    let src = StoreUrl::parse(&a.source)?;
    let targets = a
        .targets
        .iter()
        .filter(|t| !t.trim().is_empty())
        .map(|t| StoreUrl::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    // A cells:// source expands into its stores; every other pair is one route.
    let registry = routes::registry(ferry_connect::Options {
        params: routes::connector_params(Some(&a.cells_prefixes), true),
        ..Default::default()
    });
    let plan = routes::plan(&registry, std::slice::from_ref(&src), &targets, 1)
        .map_err(|e| CliError::new(ExitCode::Usage, e))?
        .routes;
    let rt = runtime()?;
    let pairs: usize = plan.iter().map(|r| r.targets.len()).sum();
    let mut failed = Vec::new();
    for route in &plan {
        for tgt in &route.targets {
            if let Err(e) = rt.block_on(one(&a, route, tgt.as_ref())) {
                // One pair: its error is the command's, said once.
                if pairs > 1 {
                    eprintln!("ferry: {}", e.message);
                }
                failed.push(e);
            }
        }
    }
    match failed.len() {
        0 => Ok(()),
        1 if pairs == 1 => Err(failed.remove(0)),
        n => Err(CliError::new(
            ExitCode::Runtime,
            format!("{n} of the stores differ from their source; see above"),
        )),
    }
}

async fn one(
    a: &VerifyArgs,
    route: &routes::Route,
    tgt: &dyn ferry_connect::Target,
) -> Result<(), CliError> {
    let src = route.source.url();
    route
        .source
        .connect()
        .await
        .map_err(|e| CliError::new(ExitCode::Refused, e))?;
    tgt.connect()
        .await
        .map_err(|e| CliError::new(ExitCode::Refused, e))?;
    let report = match routes::ranged_verifier(route.source.as_ref(), tgt) {
        Some(v) => by_ranges(a, &v).await?,
        None => routes::compare(
            route.source.as_ref(),
            tgt,
            ferry_agent::config::DEFAULT_VERIFY_TTL_TOLERANCE_S,
        )
        .await
        .map_err(|e| CliError::new(ExitCode::Runtime, e))?,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        println!("{}", report.summary);
        for d in &report.details {
            println!("  {d}");
        }
    }
    for u in &report.unmapped {
        println!("  not mapped (not on the target): {}", u.sentence);
    }
    if !report.is_equal() {
        return Err(CliError::new(
            ExitCode::Runtime,
            format!(
                "{src} and {} differ in {} places",
                tgt.url(),
                report.differences
            ),
        ));
    }
    println!("equal: {} compared", report.compared);
    Ok(())
}

/// Where the progress of a comparison of this pair is kept.
fn progress_path(a: &VerifyArgs, source: &str, target: &str) -> PathBuf {
    if let Some(p) = &a.progress {
        return p.clone();
    }
    let dir = match std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            Some(h) => PathBuf::from(h).join(".local/state"),
            // A service without a home (systemd's DynamicUser, a bare
            // container): the temporary directory still resumes.
            None => std::env::temp_dir(),
        },
    };
    dir.join("ferry").join(Progress::file_name(source, target))
}

fn load(path: &Path) -> Result<Option<Progress>, CliError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            CliError::new(
                ExitCode::Usage,
                format!(
                    "the verify progress in {} cannot be read ({e}); start again with --restart",
                    path.display()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::new(
            ExitCode::Runtime,
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// Writes the progress whole, then renames it into place.
fn save(path: &Path, p: &Progress) -> Result<(), String> {
    let fail = |e: std::io::Error| {
        format!(
            "cannot save the verify progress in {} ({e}); give --progress FILE in a writable directory",
            path.display()
        )
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(p).expect("progress serialises")).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

async fn by_ranges(a: &VerifyArgs, v: &RangeVerifier) -> Result<Comparison, CliError> {
    let (source, target) = v.names();
    let path = progress_path(a, source, target);
    // Progress of another pair (a digest collision) is ignored by verify_all.
    let saved = if a.restart { None } else { load(&path)? };
    let check: FullCheck = v
        .verify_all(saved, (a.read_rate > 0).then_some(a.read_rate), |p| {
            save(&path, p)
        })
        .await
        .map_err(|e| CliError::new(ExitCode::Runtime, e))?;
    if check.resumed_ranges > 0 {
        let ago = ferry_lag::now_ms().saturating_sub(check.started_ms) / 1000;
        eprintln!(
            "ferry: resumed the comparison of {source} with {target} cut {ago} s ago: {} of its {} ranges were found equal by an interrupted run and not read again (--restart compares everything)",
            check.resumed_ranges, check.ranges
        );
    }
    let _ = std::fs::remove_file(&path);
    let r = &check.report;
    let mut summary = format!(
        "{source} and {target}, by ranges of about {RANGE_KEYS} source entries: compared {} source entries in {} ranges ({} read on both sides): {} differences",
        r.source_keys, check.compared_ranges, r.keys, r.difference_count
    );
    if check.resumed_ranges > 0 {
        summary.push_str(&format!(
            "; {} more ranges found equal by the interrupted run",
            check.resumed_ranges
        ));
    }
    Ok(Comparison {
        compared: r.source_keys,
        differences: r.difference_count,
        details: r.differences.iter().take(20).map(detail_line).collect(),
        summary,
        ..Default::default()
    })
}
