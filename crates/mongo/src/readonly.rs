//! Switching a MongoDB source read-only with `setUserWriteBlockMode`.
//!
//! MongoDB 6.0 and later block every user write cluster-wide with
//! `setUserWriteBlockMode: 1, global: true`; users holding the
//! `bypassWriteBlockingMode` privilege (give it to Ferry's user, e.g. via
//! the `root` or a custom role) still write, which is how Ferry keeps
//! writing its own records. [`set_user_write_block`] switches it,
//! [`check_write_block`] is the pre-check that does not switch anything.
//!
//! Servers without the command (MongoDB before 6.0, SecantusDB) get
//! [`MongoError::WriteBlockUnsupported`]: one sentence that offers
//! `--source.read-only=external` (stop the writers yourself; the tailer's
//! [`FenceHandle`](crate::FenceHandle) reports any write after the fence).

use crate::error::{code, error_code};
use crate::{MongoError, MongoStore};
use mongodb::bson::doc;

/// `IDLFailedToParse`: a known command with a missing field.
const IDL_FAILED_TO_PARSE: i32 = 40414;

/// Whether `store` can block user writes, without changing anything: the
/// command is sent without its required `global` field, which a server
/// that has it refuses as malformed and one that lacks it as unknown.
pub async fn check_write_block(store: &MongoStore) -> Result<(), MongoError> {
    let unsupported = || MongoError::WriteBlockUnsupported {
        store: store.name().to_string(),
    };
    if store.info().major_version() < 6 {
        return Err(unsupported());
    }
    match store
        .client()
        .database("admin")
        .run_command(doc! {"setUserWriteBlockMode": 1})
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => match error_code(&e) {
            Some(code::COMMAND_NOT_FOUND) => Err(unsupported()),
            Some(IDL_FAILED_TO_PARSE) => Ok(()),
            Some(code::UNAUTHORIZED) => Err(MongoError::PermissionDenied {
                store: store.name().to_string(),
                action: "setUserWriteBlockMode".into(),
            }),
            // Any other refusal of a malformed request still means the
            // command exists.
            Some(_) => Ok(()),
            None => Err(store.err("checking setUserWriteBlockMode", &e)),
        },
    }
}

/// Blocks (`true`) or unblocks (`false`) user writes on the whole
/// deployment.
pub async fn set_user_write_block(store: &MongoStore, block: bool) -> Result<(), MongoError> {
    match store
        .client()
        .database("admin")
        .run_command(doc! {"setUserWriteBlockMode": 1, "global": block})
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if error_code(&e) == Some(code::COMMAND_NOT_FOUND) => {
            Err(MongoError::WriteBlockUnsupported {
                store: store.name().to_string(),
            })
        }
        Err(e) => Err(store.err("switching setUserWriteBlockMode", &e)),
    }
}

/// Whether a MongoDB target can be kept read-only while Ferry fills it.
///
/// A write block is deployment-wide and only users holding
/// `bypassWriteBlockingMode` write through it. Without authentication
/// nobody holds it (measured on mongod 7.0: every connection gets code 371),
/// so Ferry's own sink could not write either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetProtection {
    /// Ferry's user holds the bypass: user writes can be blocked until the
    /// cutover while the sink still writes.
    Blockable,
    /// The server runs without authentication.
    NoAuthentication,
    /// Ferry's user is authenticated without `bypassWriteBlockingMode`.
    NoBypass,
    /// The server has no `setUserWriteBlockMode` (before 6.0, SecantusDB).
    Unsupported,
}

impl TargetProtection {
    /// One line for the pre-check.
    pub fn describe(self) -> &'static str {
        match self {
            TargetProtection::Blockable => "read-only during the sync: user writes blocked on the whole deployment (setUserWriteBlockMode) from start to the cutover, which opens it; Ferry's user holds bypassWriteBlockingMode",
            TargetProtection::NoAuthentication => "not write-protected during the sync: without authentication MongoDB lets no user bypass setUserWriteBlockMode, so Ferry could not write a blocked target; the cutover's verification finds stray writes",
            TargetProtection::NoBypass => "not write-protected during the sync: Ferry's user lacks bypassWriteBlockingMode (grant a role with that cluster action to block the target's user writes until the cutover); the cutover's verification finds stray writes",
            TargetProtection::Unsupported => "not write-protected during the sync: the server has no setUserWriteBlockMode; the cutover's verification finds stray writes",
        }
    }
}

/// What [`TargetProtection`] `store` allows, from `connectionStatus`.
pub async fn target_protection(store: &MongoStore) -> Result<TargetProtection, MongoError> {
    match check_write_block(store).await {
        Ok(()) => {}
        Err(MongoError::WriteBlockUnsupported { .. }) => return Ok(TargetProtection::Unsupported),
        Err(MongoError::PermissionDenied { .. }) => return Ok(TargetProtection::NoBypass),
        Err(e) => return Err(e),
    }
    let r = store
        .client()
        .database("admin")
        .run_command(doc! {"connectionStatus": 1, "showPrivileges": true})
        .await
        .map_err(|e| store.err("reading connectionStatus", &e))?;
    let auth = r.get_document("authInfo").ok();
    let users = auth
        .and_then(|a| a.get_array("authenticatedUsers").ok())
        .map_or(0, Vec::len);
    if users == 0 {
        return Ok(TargetProtection::NoAuthentication);
    }
    let bypass = auth
        .and_then(|a| a.get_array("authenticatedUserPrivileges").ok())
        .is_some_and(|privs| {
            privs.iter().filter_map(|p| p.as_document()).any(|p| {
                p.get_document("resource")
                    .is_ok_and(|r| r.get_bool("cluster").unwrap_or(false))
                    && p.get_array("actions").is_ok_and(|a| {
                        a.iter()
                            .any(|x| x.as_str() == Some("bypassWriteBlockingMode"))
                    })
            })
        });
    Ok(if bypass {
        TargetProtection::Blockable
    } else {
        TargetProtection::NoBypass
    })
}
