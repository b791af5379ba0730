use super::*;

fn err(s: &str) -> UrlError {
    StoreUrl::parse(s).expect_err(s)
}

#[test]
fn parses_every_scheme() {
    let cases = [
        ("/etc/pydio.json", StoreKind::File),
        ("file:///etc/pydio.json", StoreKind::File),
        ("bolt:///var/cells/jobs.db", StoreKind::Bolt),
        ("etcd://127.0.0.1:2379/app", StoreKind::Etcd),
        ("etcd+tls://a:1,b:2/app", StoreKind::Etcd),
        ("vault://127.0.0.1:8200/secret/app", StoreKind::Vault),
        ("vaults://v.example/kv", StoreKind::Vault),
        (
            "mongodb://u:p@127.0.0.1:27017,127.0.0.2/cells?replicaSet=rs",
            StoreKind::Mongo,
        ),
        ("mongodb+srv://cluster.example/cells", StoreKind::Mongo),
        ("kafka://b1:9092,b2/events", StoreKind::Kafka),
        ("cells:///home/pydio/cells", StoreKind::Cells),
    ];
    for (url, kind) in cases {
        assert_eq!(StoreUrl::parse(url).expect(url).kind(), kind, "{url}");
    }
}

#[test]
fn etcd_fields() {
    let u = StoreUrl::parse("etcd://root:pw@127.0.0.1:2379,[::1]/app-copy?withKeys=true").unwrap();
    let StoreUrl::Etcd {
        tls,
        endpoints,
        prefix,
        user,
        params,
        ..
    } = &u
    else {
        panic!("not etcd")
    };
    assert!(!tls);
    assert_eq!(endpoints.len(), 2);
    assert_eq!(endpoints[1].host, "::1");
    assert_eq!(endpoints[1].port, 2379);
    assert_eq!(prefix, "app-copy");
    assert_eq!(user.as_deref(), Some("root"));
    assert_eq!(params.get("withKeys").map(String::as_str), Some("true"));
    assert_eq!(u.secret(), Some("pw"));
    assert_eq!(
        u.to_string(),
        "etcd://root:***@127.0.0.1:2379,[::1]:2379/app-copy?withKeys=true"
    );
}

#[test]
fn vault_fields_and_token() {
    let u = StoreUrl::parse("vault://s.TOKEN@127.0.0.1:8200/kv/cells/keyring/").unwrap();
    let StoreUrl::Vault { mount, path, .. } = &u else {
        panic!("not vault")
    };
    assert_eq!(mount, "kv");
    assert_eq!(path, "cells/keyring");
    assert_eq!(u.secret(), Some("s.TOKEN"));
    assert_eq!(u.to_string(), "vault://***@127.0.0.1:8200/kv/cells/keyring");
}

#[test]
fn secrets_never_shown() {
    for url in [
        "etcd://root:hunter2@127.0.0.1:2379/a",
        "vault://hunter2@127.0.0.1:8200/secret",
        "mongodb://admin:hunter2@127.0.0.1/db?authSource=admin",
        "etcd://127.0.0.1/a?token=hunter2",
    ] {
        let u = StoreUrl::parse(url).unwrap();
        assert!(!u.to_string().contains("hunter2"), "{u}");
        assert!(!format!("{u:?}").contains("hunter2"), "{u:?}");
    }
    // Errors redact too.
    for url in [
        "etcd://root:hunter2@127.0.0.1:99999/a",
        "vault://hunter2@127.0.0.1:8200",
        "mongodb://a:hunter2@/db",
        "nope://a:hunter2@h/x",
    ] {
        let e = err(url).to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}

#[test]
fn bad_inputs_name_the_problem() {
    assert!(matches!(err("redis://h/x"), UrlError::UnknownScheme { .. }));
    assert!(err("redis://h/x").to_string().contains("use one of"));
    assert!(matches!(err("etcd:///prefix"), UrlError::NoHost { .. }));
    assert!(matches!(
        err("etcd://:2379/prefix"),
        UrlError::NoHost { .. }
    ));
    assert!(matches!(err("etcd://h:0/p"), UrlError::BadPort { .. }));
    assert!(matches!(err("etcd://h:65536/p"), UrlError::BadPort { .. }));
    assert!(matches!(err("etcd://h:+80/p"), UrlError::BadPort { .. }));
    assert!(matches!(err("etcd://h:abc/p"), UrlError::BadPort { .. }));
    assert!(matches!(err("etcd://h h/p"), UrlError::BadHost { .. }));
    assert!(matches!(err("etcd://[::1/p"), UrlError::BadHost { .. }));
    assert!(matches!(
        err("vault://127.0.0.1:8200"),
        UrlError::MissingMount { .. }
    ));
    assert!(matches!(
        err("vault://127.0.0.1:8200/"),
        UrlError::MissingMount { .. }
    ));
    assert!(matches!(
        err("vault://a,b/secret"),
        UrlError::VaultMultiHost { .. }
    ));
    assert!(matches!(
        err("kafka://b:9092"),
        UrlError::MissingTopic { .. }
    ));
    assert!(matches!(
        err("bolt://relative.db"),
        UrlError::BadPath { .. }
    ));
    assert!(matches!(
        err("mongodb+srv://h:27017/db"),
        UrlError::Malformed { .. }
    ));
    assert!(matches!(err("etcd://h/p#frag"), UrlError::Malformed { .. }));
    assert!(matches!(err("   "), UrlError::Empty));
}

#[test]
fn percent_decoding() {
    let u = StoreUrl::parse("etcd://us%40er:p%3Aw@h/a%20b").unwrap();
    let StoreUrl::Etcd { user, prefix, .. } = &u else {
        panic!()
    };
    assert_eq!(user.as_deref(), Some("us@er"));
    assert_eq!(prefix, "a b");
    assert_eq!(u.secret(), Some("p:w"));
}

#[test]
fn target_capability() {
    assert!(!StoreKind::Bolt.can_be_target());
    assert!(!StoreKind::Cells.can_be_target());
    assert!(StoreKind::Etcd.can_be_target());
}
