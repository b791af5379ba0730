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
