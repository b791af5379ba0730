//! Fuzzing entry points (`fuzz/fuzz_targets/*` call these), kept here so
//! the invariants live beside the code and run as unit tests too.

use crate::store_url::StoreUrl;

/// Arbitrary text as a store URL: never panics, and neither a parsed URL's
/// `Display`/`Debug` nor an error shows the secret it was given.
pub fn store_url(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match StoreUrl::parse(text) {
        Ok(url) => {
            if let Some(secret) = url.secret().filter(|s| s.len() >= 4) {
                // A Mongo URI's "secret" is the whole URI; only its password matters.
                if !matches!(url, StoreUrl::Mongo { .. }) {
                    assert!(
                        !url.to_string().contains(secret),
                        "Display shows the secret"
                    );
                    assert!(
                        !format!("{url:?}").contains(secret),
                        "Debug shows the secret"
                    );
                }
            }
            let _ = url.kind();
        }
        Err(e) => {
            // If errors are redacted, the message cannot depend on the
            // password: parse again with a different one and compare.
            let Some((scheme, rest)) = text.split_once("://") else {
                return;
            };
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let Some((userinfo, hosts)) = rest[..end].rsplit_once('@') else {
                return;
            };
            let (user, secret) = userinfo.split_once(':').unwrap_or(("", userinfo));
            if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return;
            }
            let other = "Z".repeat(secret.len() + 1);
            let sep = if userinfo.contains(':') { ":" } else { "" };
            let changed = format!("{scheme}://{user}{sep}{other}@{hosts}{}", &rest[end..]);
            let again = StoreUrl::parse(&changed).err().map(|e| e.to_string());
            assert_eq!(
                again,
                Some(e.to_string()),
                "the error depends on the password"
            );
        }
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
            "",
            "::",
            "a://@",
        ] {
            super::store_url(s.as_bytes());
        }
    }
}
