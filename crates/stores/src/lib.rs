//! The registry: every store connector this build knows, by URL scheme.
//!
//! The one place that names the store crates. The agent and the CLI ask
//! [`registry`] for a URL's connector and go through the `ferry_connect`
//! traits from there; a new store is one line here (see `ferry_connect`'s
//! crate doc for the rest).

use ferry_connect::Registry;

/// `--cells.prefixes`: its option name and values.
pub use ferry_cells::connector::{
    PREFIXES as CELLS_PREFIXES, PREFIXES_PARAM as CELLS_PREFIXES_PARAM,
};

/// `--kafka.publish-secrets`: its option name.
pub use ferry_kafka::connector::PUBLISH_SECRETS_PARAM as KAFKA_PUBLISH_SECRETS_PARAM;

/// Every connector of this build, in the order messages list them.
pub fn registry() -> Registry {
    Registry::new(vec![
        Box::new(ferry_etcd::connector::EtcdConnector),
        Box::new(ferry_file::connector::FileConnector),
        Box::new(ferry_vault::connector::VaultConnector),
        Box::new(ferry_mongo::connector::MongoConnector),
        Box::new(ferry_kafka::connector::KafkaConnector),
        Box::new(ferry_cells::connector::CellsConnector),
        Box::new(ferry_cells::connector::BoltConnector),
    ])
}

#[cfg(test)]
mod tests {
    /// The store crates, by package and by Rust name.
    const STORES: &[&str] = &["etcd", "file", "vault", "mongo", "bolt", "cells", "kafka"];

    fn dependencies(manifest: &str) -> String {
        let path = format!("{}/../{manifest}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // The [dependencies] table only (dev-dependencies may start servers).
        let start = text.find("[dependencies]").expect("a [dependencies] table");
        let rest = &text[start + "[dependencies]".len()..];
        rest[..rest.find("\n[").unwrap_or(rest.len())].to_string()
    }

    fn sources(dir: &str) -> Vec<(String, String)> {
        let root = format!("{}/../{dir}/src", env!("CARGO_MANIFEST_DIR"));
        let mut out = Vec::new();
        let mut stack = vec![std::path::PathBuf::from(root)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push((
                        p.display().to_string(),
                        std::fs::read_to_string(&p).unwrap(),
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn the_agent_and_the_cli_know_no_store() {
        for krate in ["agent", "cli"] {
            let deps = dependencies(krate);
            assert!(
                deps.contains("ferry-connect"),
                "{krate} goes through the traits"
            );
            for store in STORES {
                assert!(
                    !deps.contains(&format!("ferry-{store}.")),
                    "crates/{krate} depends on ferry-{store}: go through ferry-connect and the registry"
                );
            }
            for driver in ["mongodb.", "etcd-client.", "rdkafka."] {
                assert!(
                    !deps.contains(driver),
                    "crates/{krate} depends on a store's driver {driver}"
                );
            }
            for (path, text) in sources(krate) {
                for store in STORES {
                    assert!(
                        !text.contains(&format!("ferry_{store}::")),
                        "{path} names ferry_{store}"
                    );
                }
                assert!(
                    !text.contains("StoreKind::"),
                    "{path} matches on a store kind"
                );
            }
        }
        // The registry knows every store crate it depends on.
        let deps = dependencies("stores");
        let registry =
            std::fs::read_to_string(format!("{}/src/lib.rs", env!("CARGO_MANIFEST_DIR"))).unwrap();
        for store in STORES
            .iter()
            .filter(|s| deps.contains(&format!("ferry-{s}.")))
        {
            assert!(
                registry.contains(&format!("ferry_{store}::connector")),
                "ferry-{store} is not registered"
            );
        }
    }
}
