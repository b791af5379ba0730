//! `ferry verify --source URL --target URL`: compares by digests over key
//! ranges in bounded memory and lists the keys that differ.

use super::start::runtime;
use crate::cli::VerifyArgs;
use crate::error::CliError;
use ferry_core::{ExitCode, StoreKind, StoreUrl};
use ferry_etcd::EtcdStore;

pub fn run(a: VerifyArgs) -> Result<(), CliError> {
    let src = StoreUrl::parse(&a.source)?;
    let tgt = StoreUrl::parse(&a.target)?;
    for u in [&src, &tgt] {
        if u.kind() != StoreKind::Etcd {
            return Err(CliError::new(
                ExitCode::Usage,
                format!("{u}: this build verifies etcd stores only"),
            ));
        }
    }
    let rt = runtime()?;
    rt.block_on(async {
        let s = EtcdStore::connect(&src).await.map_err(super::precheck::refused)?;
        let t = EtcdStore::connect(&tgt).await.map_err(super::precheck::refused)?;
        let report = ferry_etcd::verify::compare(&s, &t, ferry_agent::config::DEFAULT_VERIFY_TTL_TOLERANCE_S)
            .await
            .map_err(|e| CliError::new(ExitCode::Runtime, e.to_string()))?;
        let diff = report.missing_on_target + report.extra_on_target + report.value_differs + report.lease_differs;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&report).expect("report serialises"));
        } else {
            println!(
                "compared {} source keys (revision {}) with {} target keys (revision {}) over {} ranges: {} equal, {} missing on the target, {} extra on the target, {} values differ, {} leases differ",
                report.source_keys,
                report.source_revision,
                report.target_keys,
                report.target_revision,
                report.ranges.len(),
                report.equal_keys,
                report.missing_on_target,
                report.extra_on_target,
                report.value_differs,
                report.lease_differs
            );
            for d in &report.differences {
                println!("  {:?} {}: {}", d.kind, d.key_suffix, d.detail);
            }
        }
        if !report.is_equal() {
            return Err(CliError::new(ExitCode::Runtime, format!("{src} and {tgt} differ in {diff} keys")));
        }
        println!("equal: digests {} match", report.source_digest);
        Ok(())
    })
}
