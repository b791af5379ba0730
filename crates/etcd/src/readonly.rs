//! Switching an etcd source read-only through its auth roles, and back.
//!
//! etcd has no read-only mode; with authentication on, what a user may
//! write is what its roles grant. [`make_read_only`] takes write away from
//! every role except `root` and the Ferry user's own roles:
//!
//! - a `readwrite` permission becomes `read` (one grant on the same key
//!   range, which etcd applies as a change of type: reads never fail in
//!   between);
//! - a `write` permission is revoked.
//!
//! What changed is returned as [`SavedPermissions`] (serde, so the agent
//! can persist it) and also stored on the source itself under
//! `__ferry/read-only/saved` (written by the Ferry user, who keeps write
//! access), so `ferry set-server-mode --mode default` can undo it even after
//! the agent that did it is gone. [`restore`] grants every changed
//! permission back as it was and removes that record. Calling
//! [`make_read_only`] twice merges the records, so nothing is forgotten.
//!
//! Users holding `root` or one of the Ferry user's roles keep write access;
//! they are listed in [`SavedPermissions::still_writable_users`] so the
//! cutover can say so. With authentication off there is nothing to switch:
//! [`EtcdError::AuthDisabled`] tells the operator to stop the writers and
//! use `--source.read-only=external`.

use crate::{EtcdError, EtcdStore};
use etcd_client::{GetOptions, Permission, PermissionType, RoleRevokePermissionOptions};
use serde::{Deserialize, Serialize};

/// Where the saved permissions live on the source.
pub const SAVED_KEY: &[u8] = b"__ferry/read-only/saved";

/// An etcd permission type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PermKind {
    Read,
    Write,
    ReadWrite,
}

impl PermKind {
    fn from_i32(t: i32) -> Option<Self> {
        match t {
            0 => Some(PermKind::Read),
            1 => Some(PermKind::Write),
            2 => Some(PermKind::ReadWrite),
            _ => None,
        }
    }

    fn pb(self) -> PermissionType {
        match self {
            PermKind::Read => PermissionType::Read,
            PermKind::Write => PermissionType::Write,
            PermKind::ReadWrite => PermissionType::Readwrite,
        }
    }
}

/// One permission Ferry changed. Keys are hex, as they are bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionChange {
    pub role: String,
    pub key_hex: String,
    /// Empty: the single key; `00`: every key from `key` on.
    pub range_end_hex: String,
    pub before: PermKind,
    /// `None`: revoked.
    pub after: Option<PermKind>,
}

/// What [`make_read_only`] changed, to undo it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPermissions {
    /// The store, redacted.
    pub store: String,
    pub changes: Vec<PermissionChange>,
    /// Users other than Ferry's that can still write (they hold `root` or
    /// one of the Ferry user's roles).
    pub still_writable_users: Vec<String>,
}

/// The mode `ferry set-server-mode` sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMode {
    ReadOnly,
    Default,
}

/// Removes write access from every role but `root` and `ferry_user`'s; see
/// the module doc.
pub async fn make_read_only(
    store: &EtcdStore,
    ferry_user: &str,
) -> Result<SavedPermissions, EtcdError> {
    if !store.auth_enabled().await? {
        return Err(EtcdError::AuthDisabled {
            store: store.name().to_string(),
        });
    }
    let mut auth = store.client().auth_client();
    let ferry_roles = store
        .timed("reading the Ferry user's roles", auth.user_get(ferry_user))
        .await?
        .roles()
        .to_vec();
    let roles = store
        .timed("listing roles", auth.role_list())
        .await?
        .roles()
        .to_vec();
    // Record before changing anything, merged with an earlier record, so a
    // crash half-way still leaves what is needed to undo.
    let mut saved = load_saved(store)
        .await?
        .unwrap_or_else(|| SavedPermissions {
            store: store.name().to_string(),
            ..Default::default()
        });
    let mut planned = Vec::new();
    for role in roles
        .iter()
        .filter(|r| *r != "root" && !ferry_roles.contains(r))
    {
        let perms = store
            .timed("reading a role", auth.role_get(role.as_str()))
            .await?
            .permissions();
        for p in perms {
            let after = match PermKind::from_i32(p.get_type()) {
                Some(PermKind::ReadWrite) => Some(PermKind::Read),
                Some(PermKind::Write) => None,
                _ => continue,
            };
            planned.push((
                p.clone(),
                PermissionChange {
                    role: role.clone(),
                    key_hex: hex::encode(p.key()),
                    range_end_hex: hex::encode(p.range_end()),
                    before: PermKind::from_i32(p.get_type()).unwrap_or(PermKind::ReadWrite),
                    after,
                },
            ));
        }
    }
    saved.changes.extend(planned.iter().map(|(_, c)| c.clone()));
    saved.still_writable_users = writable_users(store, ferry_user, &ferry_roles).await?;
    store_saved(store, &saved).await?;
    for (p, change) in planned {
        match change.after {
            Some(kind) => {
                let perm = Permission::new(kind.pb(), p.key().to_vec())
                    .with_range_end(p.range_end().to_vec());
                store
                    .timed(
                        "granting read-only access",
                        auth.role_grant_permission(change.role.as_str(), perm),
                    )
                    .await?;
            }
            None => {
                let opts =
                    RoleRevokePermissionOptions::new().with_range_end(p.range_end().to_vec());
                store
                    .timed(
                        "revoking write access",
                        auth.role_revoke_permission(
                            change.role.as_str(),
                            p.key().to_vec(),
                            Some(opts),
                        ),
                    )
                    .await?;
            }
        }
        tracing::info!(store = store.name(), role = %change.role, key = %String::from_utf8_lossy(p.key()), "write access removed");
    }
    Ok(saved)
}

/// Grants every changed permission back as it was and removes the record
/// on the source.
pub async fn restore(store: &EtcdStore, saved: &SavedPermissions) -> Result<(), EtcdError> {
    let mut auth = store.client().auth_client();
    for c in saved.changes.iter().rev() {
        let bad = |what: &str| EtcdError::Config {
            store: store.name().to_string(),
            reason: format!(
                "the saved permissions hold a bad {what} hex; restore role {} by hand",
                c.role
            ),
        };
        let key = hex::decode(&c.key_hex).map_err(|_| bad("key"))?;
        let end = hex::decode(&c.range_end_hex).map_err(|_| bad("range end"))?;
        let perm = Permission::new(c.before.pb(), key).with_range_end(end);
        store
            .timed(
                "restoring write access",
                auth.role_grant_permission(c.role.as_str(), perm),
            )
            .await?;
    }
    let mut kv = store.kv();
    store
        .timed("removing the saved permissions", kv.delete(SAVED_KEY, None))
        .await?;
    Ok(())
}

/// `ferry set-server-mode`: `ReadOnly` is [`make_read_only`]; `Default`
/// restores what Ferry removed, from the record on the source, and returns
/// it (`None` when there was nothing to restore).
pub async fn set_server_mode(
    store: &EtcdStore,
    mode: ServerMode,
    ferry_user: &str,
) -> Result<Option<SavedPermissions>, EtcdError> {
    match mode {
        ServerMode::ReadOnly => make_read_only(store, ferry_user).await.map(Some),
        ServerMode::Default => match load_saved(store).await? {
            Some(saved) => {
                restore(store, &saved).await?;
                Ok(Some(saved))
            }
            None => Ok(None),
        },
    }
}

/// The record on the source, if any.
pub async fn load_saved(store: &EtcdStore) -> Result<Option<SavedPermissions>, EtcdError> {
    let mut kv = store.kv();
    let r = store
        .timed(
            "reading the saved permissions",
            kv.get(SAVED_KEY, None::<GetOptions>),
        )
        .await?;
    match r.kvs().first() {
        None => Ok(None),
        Some(kv) => serde_json::from_slice(kv.value())
            .map(Some)
            .map_err(|e| EtcdError::Config {
                store: store.name().to_string(),
                reason: format!(
                    "the saved permissions under {} are damaged ({e}); restore the roles by hand",
                    String::from_utf8_lossy(SAVED_KEY)
                ),
            }),
    }
}

async fn store_saved(store: &EtcdStore, saved: &SavedPermissions) -> Result<(), EtcdError> {
    let bytes = serde_json::to_vec(saved).expect("saved permissions serialize");
    let mut kv = store.kv();
    store
        .timed(
            "saving the permissions Ferry changes",
            kv.put(SAVED_KEY, bytes, None),
        )
        .await?;
    Ok(())
}

async fn writable_users(
    store: &EtcdStore,
    ferry_user: &str,
    ferry_roles: &[String],
) -> Result<Vec<String>, EtcdError> {
    let mut auth = store.client().auth_client();
    let users = store
        .timed("listing users", auth.user_list())
        .await?
        .users()
        .to_vec();
    let mut out = Vec::new();
    for u in users.into_iter().filter(|u| u != ferry_user) {
        let roles = store
            .timed("reading a user", auth.user_get(u.as_str()))
            .await?;
        if roles
            .roles()
            .iter()
            .any(|r| r == "root" || ferry_roles.contains(r))
        {
            out.push(u);
        }
    }
    Ok(out)
}
