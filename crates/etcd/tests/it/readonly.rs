//! Read-only switching through auth roles.

use crate::common::*;
use etcd_client::{Client, ConnectOptions, Permission};
use ferry_core::StoreUrl;
use ferry_etcd::readonly::{self, PermKind, ServerMode};
use ferry_etcd::{EtcdError, EtcdStore};
use ferry_testkit::Etcd;

pub const ROOT_PW: &str = "root-secret";
const APP_PW: &str = "app-secret";

/// root (password [`ROOT_PW`]), role `app` readwrite on `app/`, user `app`
/// with it, a user `ops` that also holds `root`; then auth on.
pub async fn enable_auth(etcd: &Etcd) {
    let mut c = client(etcd).await;
    c.user_add("root", ROOT_PW, None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.role_add("app").await.unwrap();
    c.role_grant_permission("app", Permission::read_write("app/").with_prefix())
        .await
        .unwrap();
    c.role_add("audit").await.unwrap();
    c.role_grant_permission("audit", Permission::write("app/audit"))
        .await
        .unwrap();
    c.user_add("app", APP_PW, None).await.unwrap();
    c.user_grant_role("app", "app").await.unwrap();
    c.user_grant_role("app", "audit").await.unwrap();
    c.user_add("ops", "ops-secret", None).await.unwrap();
    c.user_grant_role("ops", "root").await.unwrap();
    c.auth_enable().await.unwrap();
}

async fn as_user(etcd: &Etcd, user: &str, pw: &str) -> Client {
    let opts = ConnectOptions::new().with_user(user, pw);
    Client::connect([etcd.endpoint()], Some(opts))
        .await
        .unwrap()
}

async fn root_store(etcd: &Etcd) -> EtcdStore {
    let url = etcd
        .url("app/")
        .replace("etcd://", &format!("etcd://root:{ROOT_PW}@"));
    EtcdStore::connect(&StoreUrl::parse(&url).unwrap())
        .await
        .unwrap()
}

async fn app_can_write(app: &mut Client) -> bool {
    match app.put("app/x", "1", None).await {
        Ok(_) => true,
        Err(e) if e.to_string().contains("permission denied") => false,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_blocks_app_but_not_ferry_and_restores() {
    let Some(etcd) = etcd() else { return };
    enable_auth(&etcd).await;
    let ferry = root_store(&etcd).await;
    assert!(ferry.auth_enabled().await.unwrap());
    let mut app = as_user(&etcd, "app", APP_PW).await;
    assert!(app_can_write(&mut app).await);

    let saved = readonly::make_read_only(&ferry, "root").await.unwrap();
    assert_eq!(saved.changes.len(), 2, "{saved:?}");
    let rw = saved.changes.iter().find(|c| c.role == "app").unwrap();
    assert_eq!(
        (rw.before, rw.after),
        (PermKind::ReadWrite, Some(PermKind::Read))
    );
    let w = saved.changes.iter().find(|c| c.role == "audit").unwrap();
    assert_eq!((w.before, w.after), (PermKind::Write, None));
    assert_eq!(saved.still_writable_users, vec!["ops".to_string()]);
    assert!(!app_can_write(&mut app).await, "app is read-only");
    assert!(app.put("app/audit", "1", None).await.is_err());
    assert_eq!(
        app.get("app/x", None).await.unwrap().kvs().len(),
        1,
        "app still reads"
    );
    let mut root = ferry.client();
    root.put("app/by-ferry", "1", None).await.unwrap();
    // The record survives the agent: JSON round trip and on the source.
    let json = serde_json::to_string(&saved).unwrap();
    assert_eq!(
        serde_json::from_str::<readonly::SavedPermissions>(&json).unwrap(),
        saved
    );
    assert_eq!(
        readonly::load_saved(&ferry).await.unwrap().as_ref(),
        Some(&saved)
    );

    readonly::restore(&ferry, &saved).await.unwrap();
    assert!(app_can_write(&mut app).await, "app can write again");
    app.put("app/audit", "1", None).await.unwrap();
    assert_eq!(readonly::load_saved(&ferry).await.unwrap(), None);

    // set-server-mode: read-only, then default from the record on the source.
    readonly::set_server_mode(&ferry, ServerMode::ReadOnly, "root")
        .await
        .unwrap();
    assert!(!app_can_write(&mut app).await);
    // Twice read-only keeps what the first one changed.
    readonly::set_server_mode(&ferry, ServerMode::ReadOnly, "root")
        .await
        .unwrap();
    let back = readonly::set_server_mode(&ferry, ServerMode::Default, "root")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.changes.len(), 2);
    assert!(app_can_write(&mut app).await);
    assert_eq!(
        readonly::set_server_mode(&ferry, ServerMode::Default, "root")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_read_only_says_use_external() {
    let Some(etcd) = etcd() else { return };
    let s = store(&etcd, "app/").await;
    let e = readonly::make_read_only(&s, "root").await.unwrap_err();
    assert!(matches!(e, EtcdError::AuthDisabled { .. }), "{e}");
    assert!(e.to_string().contains("--source.read-only=external"), "{e}");
}
