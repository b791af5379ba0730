//! `ferry set-server-mode --source URL --mode readonly|default`.
//!
//! `readonly` takes write permission from every role but the one Ferry
//! connects as, and records exactly what it changed on the source itself
//! (under Ferry's reserved prefix); `default` gives back exactly that —
//! also after a cutover, which leaves the same record.

use super::start::runtime;
use crate::cli::ServerModeArgs;
use crate::error::CliError;
use ferry_core::{ExitCode, StoreUrl};

pub fn run(a: ServerModeArgs) -> Result<(), CliError> {
    let url = StoreUrl::parse(&a.source)?;
    let read_only = match a.mode.as_str() {
        "readonly" => true,
        "default" => false,
        other => {
            return Err(CliError::new(
                ExitCode::Usage,
                format!("unknown --mode `{other}`: use readonly or default"),
            ))
        }
    };
    let source = ferry_agent::routes::registry(Default::default())
        .source(&url)
        .map_err(|e| CliError::new(ExitCode::Usage, e))?;
    let said = runtime()?
        .block_on(source.set_server_mode(read_only))
        .map_err(|r| CliError::new(r.code, r.message))?;
    println!("{said}");
    Ok(())
}
