//! `ferry verify --source URL --target URL`: compares a source with its
//! copy the way Ferry copies it and lists what differs: etcd prefixes by
//! digests over key ranges in bounded memory, JSON documents by exact
//! bytes and by JSON equality, Vault paths version by version with
//! metadata.

use super::start::runtime;
use crate::cli::VerifyArgs;
use crate::error::CliError;
use ferry_agent::routes;
use ferry_core::{ExitCode, StoreUrl};

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
    let mut failed = Vec::new();
    for route in &plan {
        for tgt in &route.targets {
            if let Err(e) = rt.block_on(one(&a, route, tgt.as_ref())) {
                eprintln!("ferry: {}", e.message);
                failed.push(e);
            }
        }
    }
    match failed.len() {
        0 => Ok(()),
        1 => Err(failed.remove(0)),
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
    let report = routes::compare(
        route.source.as_ref(),
        tgt,
        ferry_agent::config::DEFAULT_VERIFY_TTL_TOLERANCE_S,
    )
    .await
    .map_err(|e| CliError::new(ExitCode::Runtime, e))?;
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
