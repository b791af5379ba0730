//! Fuzzing entry points (`fuzz/fuzz_targets/*` call these), kept here so
//! the invariants live beside the code and run as unit tests too.

use crate::store_url::StoreUrl;

/// Everything parsing shows a person: `Display` and `Debug`, or the error.
fn shown(text: &str) -> String {
    match StoreUrl::parse(text) {
        Ok(url) => {
            let _ = url.kind();
            format!("{url} | {url:?}")
        }
        Err(e) => e.to_string(),
    }
}

/// `text` with its password (or Vault token) replaced by a different one of
/// another length, when it has one made of plain characters.
fn with_other_secret(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (userinfo, hosts) = rest[..end].rsplit_once('@')?;
    let vault = scheme.eq_ignore_ascii_case("vault") || scheme.eq_ignore_ascii_case("vaults");
    let (user, secret) = match userinfo.split_once(':') {
        Some((u, p)) => (Some(u), p),
        // Only Vault reads a bare userinfo as a secret (the token).
        None if vault => (None, userinfo),
        None => return None,
    };
    if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let other = "Z".repeat(secret.len() + 1);
    let userinfo = user.map_or(other.clone(), |u| format!("{u}:{other}"));
    Some(format!("{scheme}://{userinfo}@{hosts}{}", &rest[end..]))
}

/// Arbitrary text as a store URL: never panics, and nothing it shows (the
/// URL's `Display` and `Debug`, or the error) depends on the password or
/// token: parsing the same text with another secret shows exactly the same.
pub fn store_url(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = shown(text);
    if let Some(changed) = with_other_secret(text) {
        assert_eq!(
            first,
            shown(&changed),
            "what is shown depends on the secret"
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_hold_the_invariants() {
        for s in [
            "etcd://root:hunter2@127.0.0.1:2379/app",
            "vault://s.token123@127.0.0.1:8200/secret/a",
            "etcd://u:secret-pw@[::1:2379/x",
            "mongodb://a:b@h/db",
            "vault://to&k@10l7sk/ayrin://to&k@10lgs:etcdtls/\u{456}",
            "vault://tok@h/secret/tok",
            "",
            "::",
            "a://@",
        ] {
            super::store_url(s.as_bytes());
        }
    }

    #[test]
    fn a_shown_secret_would_be_caught() {
        assert!(super::with_other_secret("etcd://u:pw@h/x").is_some());
        assert_ne!(
            super::shown("etcd://h:pw/x"),
            super::shown("etcd://h:ZZZ/x")
        );
    }
}
