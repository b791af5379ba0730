//! `ferry set-server-mode --source URL --mode readonly|default`.
//!
//! `readonly` takes write permission from every role but the one Ferry
//! connects as, and records exactly what it changed on the source itself
//! (under Ferry's reserved prefix); `default` gives back exactly that —
//! also after a cutover, which leaves the same record.

use super::start::runtime;
use crate::cli::ServerModeArgs;
use crate::error::CliError;
use ferry_core::{ExitCode, StoreKind, StoreUrl};
use ferry_etcd::readonly::{self, SavedPermissions, ServerMode};
use ferry_etcd::EtcdStore;

fn describe(saved: &SavedPermissions) -> String {
    let roles: std::collections::BTreeSet<&str> =
        saved.changes.iter().map(|c| c.role.as_str()).collect();
    format!(
        "{} permission(s) of {} role(s) ({})",
        saved.changes.len(),
        roles.len(),
        roles.into_iter().collect::<Vec<_>>().join(", ")
    )
}

pub fn run(a: ServerModeArgs) -> Result<(), CliError> {
    let url = StoreUrl::parse(&a.source)?;
    let mode = match a.mode.as_str() {
        "readonly" => ServerMode::ReadOnly,
        "default" => ServerMode::Default,
        other => {
            return Err(CliError::new(
                ExitCode::Usage,
                format!("unknown --mode `{other}`: use readonly or default"),
            ))
        }
    };
    if url.kind() == StoreKind::Mongo {
        return mongo(&url, mode);
    }
    if url.kind() != StoreKind::Etcd {
        return Err(CliError::new(
            ExitCode::Usage,
            format!("{url}: Ferry switches etcd and MongoDB stores; stop the writers of a {} store yourself", url.kind().name()),
        ));
    }
    let user = match &url {
        StoreUrl::Etcd { user, .. } => user.clone().unwrap_or_else(|| "root".into()),
        _ => unreachable!("checked above"),
    };
    runtime()?.block_on(async {
        let store = EtcdStore::connect(&url)
            .await
            .map_err(super::precheck::refused)?;
        let changed = readonly::set_server_mode(&store, mode, &user)
            .await
            .map_err(|e| CliError::new(ExitCode::Runtime, e.to_string()))?;
        match (mode, changed) {
            (ServerMode::ReadOnly, Some(s)) => println!(
                "{url} is read-only: took write from {}; `--mode default` gives it back",
                describe(&s)
            ),
            (ServerMode::Default, Some(s)) => {
                println!("{url} accepts writes again: restored {}", describe(&s))
            }
            (ServerMode::Default, None) => {
                println!("{url}: Ferry had made nothing read-only there; nothing to restore")
            }
            (ServerMode::ReadOnly, None) => println!("{url}: nothing to change"),
        }
        Ok(())
    })
}

/// MongoDB 6.0 and later: `setUserWriteBlockMode` on the whole deployment;
/// users with `bypassWriteBlockingMode` (Ferry's) still write.
fn mongo(url: &StoreUrl, mode: ServerMode) -> Result<(), CliError> {
    runtime()?.block_on(async {
        let store = ferry_mongo::MongoStore::connect(url)
            .await
            .map_err(|e| CliError::new(ExitCode::Refused, e.to_string()))?;
        let block = mode == ServerMode::ReadOnly;
        ferry_mongo::readonly::set_user_write_block(&store, block)
            .await
            .map_err(|e| CliError::new(ExitCode::Refused, e.to_string()))?;
        if block {
            println!("{url} is read-only: user writes are blocked (setUserWriteBlockMode); `--mode default` lifts it");
        } else {
            println!("{url} accepts user writes again");
        }
        Ok(())
    })
}
