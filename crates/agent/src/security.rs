//! The agent's TLS identity and control token, kept in the journal directory.
//!
//! On first start the agent makes a private CA and a server certificate
//! signed by it (SANs: `localhost`, `127.0.0.1`, `::1`, the host name and the
//! listen address), and a random 256-bit token. Files are 0600:
//!
//! | file | what |
//! |---|---|
//! | `agent-ca.pem` | the CA certificate the CLI trusts |
//! | `agent-ca-key.pem` | the CA key (re-issues the server certificate) |
//! | `agent-cert.pem`, `agent-key.pem` | the server certificate and key |
//! | `agent.token` | the bearer token for `/v1/*` |
//!
//! An operator may give `--agent.cert/--agent.key` instead; `--agent.client-ca`
//! makes the server require client certificates signed by that CA.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CA_FILE: &str = "agent-ca.pem";
const CA_KEY_FILE: &str = "agent-ca-key.pem";
const CERT_FILE: &str = "agent-cert.pem";
const KEY_FILE: &str = "agent-key.pem";
pub const TOKEN_FILE: &str = "agent.token";
/// A random id naming this journal on targets, so checkpoints a target
/// holds from another journal are never taken for this one's.
const JOURNAL_ID_FILE: &str = "journal.id";

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read {path}: {reason}; check the path and its permissions")]
    Read { path: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("{path} holds no usable {what}; give a PEM file")]
    Pem { path: String, what: &'static str },
    #[error("making the agent certificate failed: {0}")]
    Cert(String),
    #[error("the TLS configuration is invalid: {0}")]
    Tls(String),
}

/// Writes `data` to `path` with mode 0600, durably, replacing any old file.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), SecurityError> {
    ferry_connect::state::write_private(path, data).map_err(|e| SecurityError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|e| SecurityError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::Rng::fill(&mut rand::rngs::OsRng, &mut bytes[..]);
    hex::encode(bytes)
}

/// Reads the journal id, creating it on first use.
/// Also says whether it was made now: no agent ran on this journal before.
pub fn ensure_journal_id(dir: &Path) -> Result<(String, bool), SecurityError> {
    let path = dir.join(JOURNAL_ID_FILE);
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if id.len() == 32 {
            return Ok((id, false));
        }
    }
    let id = random_hex(16);
    write_private(&path, format!("{id}\n").as_bytes())?;
    Ok((id, true))
}

/// Reads the token, creating it on first use.
pub fn ensure_token(dir: &Path) -> Result<String, SecurityError> {
    let path = dir.join(TOKEN_FILE);
    if path.exists() {
        let t = String::from_utf8_lossy(&read(&path)?).trim().to_string();
        if t.len() >= 32 {
            return Ok(t);
        }
    }
    let token = random_hex(32);
    write_private(&path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// Compares in time independent of where the strings differ.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where the agent's certificate and key are.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SHA-256 of the server certificate (DER), hex, `:`-separated.
    pub fingerprint: String,
    /// Set when Ferry made the certificate (and the CLI should trust this CA).
    pub ca: Option<PathBuf>,
}

/// Uses the given certificate, or the one made earlier, or makes one.
pub fn ensure_identity(
    dir: &Path,
    given: Option<(&Path, &Path)>,
    extra_names: &[String],
) -> Result<Identity, SecurityError> {
    if let Some((cert, key)) = given {
        let der = first_cert(cert)?;
        PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|_| SecurityError::Pem {
            path: key.display().to_string(),
            what: "private key",
        })?;
        return Ok(Identity {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            fingerprint: fingerprint(&der),
            ca: None,
        });
    }
    let (cert, key, ca) = (dir.join(CERT_FILE), dir.join(KEY_FILE), dir.join(CA_FILE));
    if !(cert.exists() && key.exists() && ca.exists()) {
        make_identity(dir, extra_names)?;
    }
    let der = first_cert(&cert)?;
    Ok(Identity {
        cert,
        key,
        fingerprint: fingerprint(&der),
        ca: Some(ca),
    })
}

fn make_identity(dir: &Path, extra_names: &[String]) -> Result<(), SecurityError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let e = |e: rcgen::Error| SecurityError::Cert(e.to_string());
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Ferry agent CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(e)?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    names.extend(
        extra_names
            .iter()
            .filter(|n| !n.is_empty() && *n != "0.0.0.0")
            .cloned(),
    );
    names.sort();
    names.dedup();
    let key = KeyPair::generate().map_err(e)?;
    let mut params = CertificateParams::new(names).map_err(e)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Ferry agent");
    let issuer = Issuer::new(ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).map_err(e)?;
    write_private(&dir.join(CA_KEY_FILE), ca_key.serialize_pem().as_bytes())?;
    write_private(&dir.join(KEY_FILE), key.serialize_pem().as_bytes())?;
    write_private(&dir.join(CERT_FILE), cert.pem().as_bytes())?;
    write_private(&dir.join(CA_FILE), ca_cert.pem().as_bytes())?;
    Ok(())
}

fn first_cert(path: &Path) -> Result<CertificateDer<'static>, SecurityError> {
    certs(path)?.into_iter().next().ok_or(SecurityError::Pem {
        path: path.display().to_string(),
        what: "certificate",
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let data = read(path)?;
    CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| SecurityError::Pem {
            path: path.display().to_string(),
            what: "certificate",
        })
}

pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The rustls server configuration; with `client_ca`, client certificates
/// signed by it are required.
pub fn server_config(
    id: &Identity,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, SecurityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| SecurityError::Tls(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| SecurityError::Tls(e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| SecurityError::Tls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::from_pem_slice(&read(&id.key)?).map_err(|_| SecurityError::Pem {
        path: id.key.display().to_string(),
        what: "private key",
    })?;
    let mut cfg = builder
        .with_single_cert(certs(&id.cert)?, key)
        .map_err(|e| SecurityError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_token_are_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let a = ensure_identity(t.path(), None, &[]).unwrap();
        let b = ensure_identity(t.path(), None, &[]).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        let tok = ensure_token(t.path()).unwrap();
        assert_eq!(tok, ensure_token(t.path()).unwrap());
        for f in [CA_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE, TOKEN_FILE] {
            let mode = std::fs::metadata(t.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        assert!(server_config(&a, None).is_ok());
        assert!(server_config(&a, Some(&t.path().join(CA_FILE))).is_ok());
        assert!(token_matches(&tok, &tok));
        assert!(!token_matches(&tok, &tok[1..]));
    }
}
