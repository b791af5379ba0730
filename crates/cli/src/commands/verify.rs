//! `ferry verify --source URL --target URL`: compares a source with its
//! copy the way Ferry copies it and lists what differs: etcd prefixes by
//! digests over key ranges in bounded memory, JSON documents by exact
//! bytes and by JSON equality, Vault paths version by version with
//! metadata.

use super::start::runtime;
use crate::cli::VerifyArgs;
use crate::error::CliError;
use ferry_agent::routes::{self, SourceConn, TargetConn};
use ferry_core::{ExitCode, StoreUrl};

pub fn run(a: VerifyArgs) -> Result<(), CliError> {
    let src = StoreUrl::parse(&a.source)?;
    let tgt = StoreUrl::parse(&a.target)?;
    routes::check_pair(&src, &tgt).map_err(|e| CliError::new(ExitCode::Usage, e))?;
    let rt = runtime()?;
    rt.block_on(async {
        let s = SourceConn::connect(&src)
            .await
            .map_err(|e| CliError::new(ExitCode::Refused, e))?;
        let t = TargetConn::connect(&tgt)
            .await
            .map_err(|e| CliError::new(ExitCode::Refused, e))?;
        let report = routes::compare(
            &src,
            &s,
            &tgt,
            &t,
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
        if !report.is_equal() {
            return Err(CliError::new(
                ExitCode::Runtime,
                format!("{src} and {tgt} differ in {} places", report.differences),
            ));
        }
        println!("equal: {} compared", report.compared);
        Ok(())
    })
}
