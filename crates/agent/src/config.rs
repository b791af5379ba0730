//! The agent's configuration, kept as `agent.json` in the journal directory
//! so that `ferry start` with the same journal resumes the same migration.
//!
//! It never holds a secret: store URLs are kept in their redacted form (to
//! recognise the same stores again), and the full URLs reach the agent
//! through its environment (`FERRY_SOURCE`, `FERRY_TARGET`), set by `start`.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "agent.json";

/// Port 8629, as the ArangoDB migration tool users know it.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8629";
/// Lag under which the cutover may switch the source read-only: small
/// enough that draining takes well under a second at typical apply rates.
pub const DEFAULT_CUTOVER_MAX_LAG_EVENTS: u64 = 1000;
/// Longest the cutover waits for lag, then for the fence, before it gives
/// up and restores the source.
pub const DEFAULT_CUTOVER_TIMEOUT_MS: u64 = 600_000;
/// Lease TTLs may differ by the time between the two reads plus one tick.
pub const DEFAULT_VERIFY_TTL_TOLERANCE_S: i64 = 5;
pub const DEFAULT_VAULT_POLL_MS: u64 = 1000;

fn default_vault_poll_ms() -> u64 {
    DEFAULT_VAULT_POLL_MS
}

/// Keys a second the continuous verifier reads, both sides counted.
pub const DEFAULT_VERIFY_RATE: u64 = 20_000;

fn default_verify_rate() -> u64 {
    DEFAULT_VERIFY_RATE
}

/// How the source is made read-only at cutover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadOnlyMode {
    /// By the store's own means (etcd: write permission taken from roles).
    #[default]
    Auth,
    /// The operator stops the writers; Ferry watches for writes after the fence.
    External,
}

impl std::str::FromStr for ReadOnlyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auth" => Ok(ReadOnlyMode::Auth),
            "external" => Ok(ReadOnlyMode::External),
            _ => Err(format!(
                "unknown read-only mode `{s}`: use auth or external"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Redacted source URLs.
    pub sources: Vec<String>,
    /// Redacted target URLs.
    pub targets: Vec<String>,
    pub shards: u32,
    pub listen: String,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    /// Source reads and target writes per second, if limited.
    pub rate_limit_ops: Option<u32>,
    pub source_read_only: ReadOnlyMode,
    /// Take a new snapshot when the resume position was compacted away.
    pub resnapshot_on_compaction: bool,
    /// Run verification before opening the target.
    pub verify_on_cutover: bool,
    /// Keys a second the continuous verifier reads (0: off); with
    /// `rate_limit_ops`, at most a quarter of it.
    #[serde(default = "default_verify_rate")]
    pub verify_rate: u64,
    /// Collection naming of the Cells mapping: v4, v4-early or none.
    #[serde(default)]
    pub cells_prefixes: Option<String>,
    /// Unmapped Bolt entries the cutover may leave behind, each named
    /// `<service>:<bucket path>/<key>` as `status` shows them.
    #[serde(default)]
    pub cells_accept_unmapped: Vec<String>,
    /// Publish values of secret sources to a Kafka target as plain text.
    #[serde(default)]
    pub kafka_publish_secrets: bool,
    /// How often a Vault source is looked at for changes.
    #[serde(default = "default_vault_poll_ms")]
    pub vault_poll_ms: u64,
    pub cutover_max_lag_events: u64,
    pub cutover_timeout_ms: u64,
    /// Longest one apply to a target may take (see `WorkerConfig`).
    #[serde(default = "default_apply_timeout_ms")]
    pub apply_timeout_ms: u64,
    /// The journal in Kafka (`kafka://brokers/name`) instead of the
    /// RocksDB journal in the agent's directory.
    #[serde(default)]
    pub journal_url: Option<String>,
    /// Agents sharing the migration, coordinated on etcd
    /// (`etcd://host:port/ferry/<migration>`); needs `journal_url`.
    #[serde(default)]
    pub coordinator: Option<String>,
    /// Target writes per second of this agent, if limited apart from
    /// source reads (`rate_limit_ops` otherwise).
    #[serde(default)]
    pub target_rate_limit_ops: Option<u32>,
}

fn default_apply_timeout_ms() -> u64 {
    ferry_replay::worker::DEFAULT_APPLY_TIMEOUT.as_millis() as u64
}

impl AgentConfig {
    /// Checks the configuration without any I/O; names the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.sources.is_empty() || self.targets.is_empty() {
            return Err("give at least one --source and one --target".into());
        }
        if let Some(p) = &self.cells_prefixes {
            let values = crate::routes::cells_prefix_values();
            if !values.contains(&p.as_str()) {
                return Err(format!(
                    "--cells.prefixes: `{p}` is not one of {}",
                    values.join(", ")
                ));
            }
        }
        if self.vault_poll_ms == 0 {
            return Err("--vault.poll must be at least 1 ms".into());
        }
        if !(1..=4096).contains(&self.shards) {
            return Err(format!("--shards must be 1 to 4096, not {}", self.shards));
        }
        self.listen_addr()?;
        if self.cert.is_some() != self.key.is_some() {
            return Err("--agent.cert and --agent.key go together".into());
        }
        if self.rate_limit_ops == Some(0) {
            return Err("--rate-limit must be at least 1 operation per second".into());
        }
        if self.target_rate_limit_ops == Some(0) {
            return Err("--target.rate-limit must be at least 1 write per second".into());
        }
        if let Some(u) = &self.journal_url {
            ferry_journal_kafka::JournalUrl::parse(u).map_err(|e| format!("--journal.url: {e}"))?;
        }
        if let Some(u) = &self.coordinator {
            ferry_coordinator::CoordinatorUrl::parse(u)
                .map_err(|e| format!("--coordinator: {e}"))?;
            if self.journal_url.is_none() {
                return Err("--coordinator needs --journal.url kafka://…: agents sharing a migration share its journal, which a local directory cannot be".into());
            }
        }
        Ok(())
    }

    /// What the connectors read of this configuration.
    pub fn connector_options(&self) -> ferry_connect::Options {
        ferry_connect::Options {
            resnapshot_on_compaction: self.resnapshot_on_compaction,
            source_limiter: None,
            poll_interval: Some(std::time::Duration::from_millis(self.vault_poll_ms)),
            params: crate::routes::connector_params(
                self.cells_prefixes.as_deref(),
                self.kafka_publish_secrets,
            ),
        }
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen.parse().map_err(|_| {
            format!(
                "--agent.listen `{}` is not HOST:PORT with an IP address, e.g. 127.0.0.1:8629",
                self.listen
            )
        })
    }

    pub fn load(dir: &Path) -> Result<Option<AgentConfig>, String> {
        let path = dir.join(CONFIG_FILE);
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
                format!(
                    "{} is damaged ({e}); remove it to start over",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let data = serde_json::to_vec_pretty(self).expect("config serialises");
        crate::security::write_private(&dir.join(CONFIG_FILE), &data).map_err(|e| e.to_string())
    }

    /// The address a CLI on this machine uses to reach the agent.
    pub fn local_url(&self) -> String {
        let addr = self
            .listen_addr()
            .unwrap_or_else(|_| DEFAULT_LISTEN.parse().expect("default"));
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        format!("https://{host}:{}", addr.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AgentConfig {
        AgentConfig {
            sources: vec!["etcd://a:2379/app".into()],
            targets: vec!["etcd://b:2379/app".into()],
            shards: 8,
            listen: DEFAULT_LISTEN.into(),
            cert: None,
            key: None,
            client_ca: None,
            rate_limit_ops: None,
            source_read_only: ReadOnlyMode::Auth,
            resnapshot_on_compaction: true,
            verify_on_cutover: true,
            verify_rate: DEFAULT_VERIFY_RATE,
            vault_poll_ms: DEFAULT_VAULT_POLL_MS,
            cells_prefixes: None,
            cells_accept_unmapped: Vec::new(),
            kafka_publish_secrets: false,
            cutover_max_lag_events: DEFAULT_CUTOVER_MAX_LAG_EVENTS,
            cutover_timeout_ms: DEFAULT_CUTOVER_TIMEOUT_MS,
            apply_timeout_ms: default_apply_timeout_ms(),
            journal_url: None,
            coordinator: None,
            target_rate_limit_ops: None,
        }
    }

    #[test]
    fn validate_names_the_field() {
        assert!(cfg().validate().is_ok());
        let mut c = cfg();
        c.listen = "localhost:x".into();
        assert!(c.validate().unwrap_err().contains("--agent.listen"));
        let mut c = cfg();
        c.shards = 0;
        assert!(c.validate().unwrap_err().contains("--shards"));
        let mut c = cfg();
        c.cert = Some("/x".into());
        assert!(c.validate().unwrap_err().contains("--agent.key"));
        assert_eq!(cfg().local_url(), "https://127.0.0.1:8629");
    }

    #[test]
    fn round_trips_and_refuses_unknown_fields() {
        let t = tempfile::tempdir().unwrap();
        cfg().save(t.path()).unwrap();
        assert_eq!(AgentConfig::load(t.path()).unwrap(), Some(cfg()));
        std::fs::write(t.path().join(CONFIG_FILE), r#"{"sources":[],"bogus":1}"#).unwrap();
        assert!(AgentConfig::load(t.path()).is_err());
    }
}
