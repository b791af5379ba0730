//! The CLI side of the agent's HTTPS API.
//!
//! Trust: the agent's CA (`agent-ca.pem` in the journal directory) or
//! `--agent.ca`; nothing else, so a CLI cannot be pointed at an impostor.
//! Authentication: the token in the journal directory (or `FERRY_AGENT_TOKEN`),
//! and a client certificate when the agent requires one.

use crate::error::CliError;
use ferry_agent::api::{StatusResponse, StopRequest, StopResponse};
use ferry_agent::security::{CA_FILE, TOKEN_FILE};
use ferry_core::ExitCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How to reach and authenticate to an agent.
#[derive(Clone, Debug)]
pub struct AgentTarget {
    pub url: String,
    pub ca: PathBuf,
    /// Given explicitly; otherwise read from `token_file` at each request
    /// (an agent being started writes it after `start` resolved this).
    pub token: Option<String>,
    pub token_file: PathBuf,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl AgentTarget {
    /// From the journal directory, with explicit flags taking precedence.
    pub fn resolve(
        journal: &Path,
        url: Option<String>,
        ca: Option<PathBuf>,
        token: Option<String>,
        client_cert: Option<(PathBuf, PathBuf)>,
    ) -> Result<AgentTarget, CliError> {
        let cfg = ferry_agent::config::AgentConfig::load(journal)
            .map_err(|e| CliError::new(ExitCode::Usage, e))?;
        let url = match (url, &cfg) {
            (Some(u), _) => u,
            (None, Some(c)) => c.local_url(),
            (None, None) => {
                return Err(CliError::new(
                    ExitCode::Runtime,
                    format!(
                        "no agent is known for journal {}: start one with `ferry start --journal {}`, or give --agent URL",
                        journal.display(),
                        journal.display()
                    ),
                ))
            }
        };
        Ok(AgentTarget {
            url: url.trim_end_matches('/').to_string(),
            ca: ca.unwrap_or_else(|| journal.join(CA_FILE)),
            token,
            token_file: journal.join(TOKEN_FILE),
            client_cert,
        })
    }

    fn client(&self) -> Result<reqwest::Client, CliError> {
        let bad = |what: String| CliError::new(ExitCode::Usage, what);
        let pem = std::fs::read(&self.ca).map_err(|e| {
            bad(format!(
                "cannot read the agent's CA certificate {} ({e}); give the agent's --journal or --agent.ca",
                self.ca.display()
            ))
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            let c =
                c.map_err(|_| bad(format!("{} is not a PEM certificate", self.ca.display())))?;
            roots.add(c).map_err(|e| {
                bad(format!(
                    "{} is not a usable CA certificate: {e}",
                    self.ca.display()
                ))
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots);
        let tls = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<_, _>>())
                    .map_err(|_| {
                        bad(format!("cannot read client certificate {}", cert.display()))
                    })?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|_| bad(format!("cannot read client key {}", key.display())))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| bad(format!("the client certificate is unusable: {e}")))?
            }
        };
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| bad(format!("cannot set up the HTTPS client: {e}")))
    }

    fn explain(&self, e: reqwest::Error) -> CliError {
        let text = format!("{e:?}");
        if e.is_connect()
            && (text.contains("Connection refused") || text.contains("ConnectionRefused"))
        {
            return CliError::new(
                ExitCode::Runtime,
                format!(
                    "no agent is running at {} (connection refused); start one with `ferry start`",
                    self.url
                ),
            );
        }
        // With TLS 1.3 the agent's refusal of a missing client certificate
        // comes after the client's handshake is done: when the request was
        // already on its way, the client sees only the connection closing,
        // without the alert.
        let closed_unseen = self.client_cert.is_none()
            && (text.contains("connection was not ready")
                || text.contains("IncompleteMessage")
                || text.contains("connection closed before message completed"));
        if text.contains("CertificateRequired")
            || text.contains("HandshakeFailure")
            || text.contains("alert")
            || closed_unseen
        {
            return CliError::new(
                ExitCode::Usage,
                format!(
                    "the agent at {} requires a client certificate signed by its --agent.client-ca; give --agent.client-cert and --agent.client-key",
                    self.url
                ),
            );
        }
        if text.contains("UnknownIssuer")
            || text.contains("certificate")
            || text.contains("NotValidForName")
        {
            return CliError::new(
                ExitCode::Usage,
                format!(
                    "the agent at {} presented a certificate that {} does not vouch for; give that agent's --journal or --agent.ca",
                    self.url,
                    self.ca.display()
                ),
            );
        }
        if e.is_timeout() {
            return CliError::new(
                ExitCode::Runtime,
                format!("the agent at {} did not answer in time", self.url),
            );
        }
        CliError::new(
            ExitCode::Runtime,
            format!("cannot reach the agent at {}: {}", self.url, root_cause(&e)),
        )
    }

    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let token = self.token.clone().or_else(|| {
            std::fs::read_to_string(&self.token_file)
                .ok()
                .map(|t| t.trim().to_string())
        });
        match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    fn check(&self, resp: reqwest::Response) -> Result<reqwest::Response, CliError> {
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(CliError::new(
                ExitCode::Usage,
                format!("the agent at {} refused the token; give the agent's --journal (its agent.token) or FERRY_AGENT_TOKEN", self.url),
            ));
        }
        Ok(resp)
    }

    pub async fn status(&self) -> Result<StatusResponse, CliError> {
        let c = self.client()?;
        let resp = self
            .authed(c.get(format!("{}/v1/status", self.url)))
            .send()
            .await
            .map_err(|e| self.explain(e))?;
        self.check(resp)?.json().await.map_err(|e| {
            CliError::new(
                ExitCode::Runtime,
                format!("the agent sent an unreadable status: {e}"),
            )
        })
    }

    pub async fn stop(
        &self,
        abort: bool,
        accept_unmapped: &[String],
    ) -> Result<StopResponse, CliError> {
        let c = self.client()?;
        let resp = self
            .authed(c.post(format!("{}/v1/stop", self.url)))
            .json(&StopRequest {
                abort,
                accept_unmapped: accept_unmapped.to_vec(),
            })
            .send()
            .await
            .map_err(|e| self.explain(e))?;
        self.check(resp)?.json().await.map_err(|e| {
            CliError::new(
                ExitCode::Runtime,
                format!("the agent sent an unreadable answer: {e}"),
            )
        })
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
