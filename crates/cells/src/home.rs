//! A Cells working directory and the stores in it.
//!
//! Layout (Cells v4, `shared/reference/cells-stores.md` section 1):
//! `pydio.json` (configuration), `pydio-vault.json` (config vault),
//! `cells-vault-key` (keyring), `certs/` (certmagic files) and
//! `services/<service>/<file>.db` (each service's Bolt store).

use crate::service::Service;
use std::path::{Path, PathBuf};

/// Why a directory is not a Cells home Ferry can migrate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HomeError {
    #[error("{0} is not a directory; give the Cells working directory (CELLS_WORKING_DIR, ~/.config/pydio/cells by default)")]
    NotADirectory(String),
    #[error("{dir} is missing {missing}; a Cells home holds pydio.json, pydio-vault.json and cells-vault-key: give the Cells working directory, or restore the file")]
    Missing { dir: String, missing: String },
    #[error("{dir} has an unknown layout ({reason}); Ferry migrates Cells v4 homes")]
    UnknownLayout { dir: String, reason: String },
}

/// The stores of one Cells home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellsHome {
    pub root: PathBuf,
    pub config: PathBuf,
    pub vault: PathBuf,
    pub keyring: PathBuf,
    /// `certs/`, when present.
    pub certs: Option<PathBuf>,
    /// Each service's Bolt file that exists, in [`Service::ALL`] order.
    pub bolts: Vec<(Service, PathBuf)>,
}

impl CellsHome {
    pub fn open(root: &Path) -> Result<CellsHome, HomeError> {
        let show = root.display().to_string();
        if !root.is_dir() {
            return Err(HomeError::NotADirectory(show));
        }
        let missing: Vec<&str> = ["pydio.json", "pydio-vault.json", "cells-vault-key"]
            .into_iter()
            .filter(|f| !root.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(HomeError::Missing {
                dir: show,
                missing: missing.join(" and "),
            });
        }
        let config = root.join("pydio.json");
        let version = std::fs::read(&config)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v.get("version")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            });
        if let Some(v) = &version {
            if !v.starts_with("4.") {
                return Err(HomeError::UnknownLayout {
                    dir: show,
                    reason: format!("pydio.json says version {v}"),
                });
            }
        }
        let services = root.join("services");
        if !services.is_dir() {
            return Err(HomeError::UnknownLayout {
                dir: show,
                reason:
                    "no services/ directory; Cells v4 keeps each service's data in services/<name>/"
                        .into(),
            });
        }
        let bolts: Vec<(Service, PathBuf)> = Service::ALL
            .into_iter()
            .map(|s| (s, services.join(s.name()).join(s.bolt_file())))
            .filter(|(_, p)| p.is_file())
            .collect();
        if bolts.is_empty() {
            return Err(HomeError::UnknownLayout {
                dir: show,
                reason: "services/ holds none of the Bolt files Cells v4 writes (docstore.db, activities.db, chat.db, queue.db, versions.db, jobs.db)".into(),
            });
        }
        let certs = Some(root.join("certs")).filter(|p| p.is_dir());
        Ok(CellsHome {
            root: root.to_path_buf(),
            vault: root.join("pydio-vault.json"),
            keyring: root.join("cells-vault-key"),
            config,
            certs,
            bolts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("pydio.json"), r#"{"version":"4.4.3"}"#).unwrap();
        std::fs::write(t.path().join("pydio-vault.json"), "{}").unwrap();
        std::fs::write(t.path().join("cells-vault-key"), "{}").unwrap();
        let d = t.path().join("services/pydio.grpc.jobs");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("jobs.db"), b"x").unwrap();
        t
    }

    #[test]
    fn finds_the_stores() {
        let t = home();
        let h = CellsHome::open(t.path()).unwrap();
        assert_eq!(h.bolts.len(), 1);
        assert_eq!(h.bolts[0].0, Service::Jobs);
        assert!(h.certs.is_none());
    }

    #[test]
    fn refusals_name_the_problem() {
        let t = home();
        std::fs::remove_file(t.path().join("cells-vault-key")).unwrap();
        let e = CellsHome::open(t.path()).unwrap_err().to_string();
        assert!(e.contains("missing cells-vault-key"), "{e}");
        let t = home();
        std::fs::write(t.path().join("pydio.json"), r#"{"version":"2.1.0"}"#).unwrap();
        let e = CellsHome::open(t.path()).unwrap_err().to_string();
        assert!(e.contains("unknown layout") && e.contains("2.1.0"), "{e}");
        let t = home();
        std::fs::remove_dir_all(t.path().join("services")).unwrap();
        assert!(CellsHome::open(t.path())
            .unwrap_err()
            .to_string()
            .contains("no services/"));
        assert!(matches!(
            CellsHome::open(&t.path().join("nope")),
            Err(HomeError::NotADirectory(_))
        ));
    }
}
