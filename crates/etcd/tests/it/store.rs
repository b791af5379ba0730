//! Connecting and the pre-check helpers.

use crate::common::*;
use ferry_core::{ErrorKind, StoreUrl};
use ferry_etcd::{EtcdError, EtcdStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prechecks_report_version_counts_and_sizes() {
    let Some(etcd) = etcd() else { return };
    let mut c = client(&etcd).await;
    fill(&mut c, "app/", 250, 10).await;
    c.put("app/big", vec![b'x'; 100_000], None).await.unwrap();
    c.put("apple", "outside?", None).await.unwrap();
    c.put("other/x", "1", None).await.unwrap();
    let s = store(&etcd, "app/").await;
    assert!(s.server_version().await.unwrap().starts_with("3."));
    assert!(s.head_revision().await.unwrap() > 3);
    assert_eq!(s.count_prefix().await.unwrap(), 251);
    let big = s.max_value_len_in_prefix().await.unwrap().unwrap();
    assert_eq!(
        (big.key.as_slice(), big.value_bytes),
        (&b"app/big"[..], 100_000)
    );
    assert!(!s.auth_enabled().await.unwrap());
    // A byte prefix: `app` covers `apple` too, as in etcdctl.
    assert_eq!(store(&etcd, "app").await.count_prefix().await.unwrap(), 252);
    let t = store(&etcd, "app/copy").await;
    assert!(s.overlaps(&t) && t.overlaps(&s));
    assert!(!s.overlaps(&store(&etcd, "other/").await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_bad_password_are_told_apart() {
    let Some(mut etcd) = etcd() else { return };
    let url = etcd.url("app");
    etcd.stop();
    let e = EtcdStore::connect(&StoreUrl::parse(&url).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, EtcdError::Unreachable { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::Transient);
    assert!(e.to_string().contains(&url), "{e}");
    etcd.restart().unwrap();

    crate::readonly::enable_auth(&etcd).await;
    let bad = url.replace("etcd://", "etcd://root:wrong-secret@");
    let e = EtcdStore::connect(&StoreUrl::parse(&bad).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, EtcdError::AuthFailed { .. }), "{e}");
    assert!(!e.to_string().contains("wrong-secret"), "{e}");
    assert_eq!(e.kind(), ErrorKind::Permanent);
    // Without credentials the store connects, sees auth on, and cannot read.
    let anon = EtcdStore::connect(&StoreUrl::parse(&url).unwrap())
        .await
        .unwrap();
    assert!(anon.auth_enabled().await.unwrap());
    let e = anon.count_prefix().await.unwrap_err();
    assert!(
        matches!(
            e,
            EtcdError::AuthRequired { .. } | EtcdError::PermissionDenied { .. }
        ),
        "{e}"
    );
}
