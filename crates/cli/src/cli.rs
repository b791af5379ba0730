//! The command line: every flag also reads an environment variable.

use clap::{Args, Parser, Subcommand};
use ferry_agent::config::ReadOnlyMode;
use ferry_journal::PersistPolicy;
use std::path::PathBuf;

/// Ferry moves the live state of a service between stores and keeps them in
/// sync until a provable cutover.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 success, 1 runtime failure, 2 bad usage or input, 3 refused by a pre-check."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// A TOML file holding any of the flags (`[source] urls = […]`, …);
    /// flags and environment variables override it.
    #[arg(long, global = true, env = "FERRY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the pre-checks, start the agent (detached) and monitor it.
    Start(StartArgs),
    /// Show per-shard progress and lag of the running agent.
    Status(StatusArgs),
    /// Cut over: source read-only, wait for the fence, verify, open the target.
    Stop(StopArgs),
    /// Switch a source store read-only or back, by hand.
    SetServerMode(ServerModeArgs),
    /// Compare a source and a target and list the keys that differ.
    Verify(VerifyArgs),
    /// Copy a configuration document between stores (JSON file, etcd).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect, verify or repair a journal directory.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page (roff), e.g. `ferry man > /usr/local/share/man/man1/ferry.1`.
    Man,
    /// Run the agent in this process (what `ferry start` launches).
    #[command(hide = true)]
    Agent(AgentArgs),
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell, e.g. bash: `ferry completions bash > /etc/bash_completion.d/ferry`.
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug, Clone)]
pub struct StartArgs {
    // URLs are parsed by the command, not by clap: clap's error would echo
    // the raw value, password included.
    /// A source store URL (in FERRY_SOURCE, separate several with spaces).
    #[arg(
        long = "source",
        env = "FERRY_SOURCE",
        value_delimiter = ' ',
        required = true
    )]
    pub sources: Vec<String>,
    /// A target store URL (repeatable; in FERRY_TARGET, separate with spaces).
    #[arg(
        long = "target",
        env = "FERRY_TARGET",
        value_delimiter = ' ',
        required = true
    )]
    pub targets: Vec<String>,
    /// The journal directory (with `--journal.url`, the agent's own files only).
    #[arg(long, env = "FERRY_JOURNAL", default_value = "ferry-journal")]
    pub journal: PathBuf,
    /// Keep the journal in Kafka, `kafka://broker[,broker]/name`, instead of
    /// RocksDB in the journal directory (agents sharing one migration).
    #[arg(long = "journal.url", env = "FERRY_JOURNAL_URL")]
    pub journal_url: Option<String>,
    /// Share the migration with other agents, coordinated on etcd:
    /// `etcd://host:port/ferry/<migration>` (needs `--journal.url`).
    #[arg(long, env = "FERRY_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Number of shards.
    #[arg(long, env = "FERRY_SHARDS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub shards: u32,
    /// Run the pre-checks, print them, and stop without sending any data.
    #[arg(long, env = "FERRY_CHECK_ONLY")]
    pub check_only: bool,
    /// Run the agent in this process instead of detached.
    #[arg(long, env = "FERRY_FOREGROUND")]
    pub foreground: bool,
    /// Start the agent and return at once instead of monitoring it.
    #[arg(long, env = "FERRY_NO_MONITOR")]
    pub no_monitor: bool,
    /// Copy even though the target is not empty (its keys are overwritten, and ones the source lacks are removed).
    #[arg(long, env = "FERRY_FORCE")]
    pub force: bool,
    /// Cap source reads and target writes, in operations per second.
    #[arg(long, env = "FERRY_RATE_LIMIT", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: Option<u32>,
    /// Cap this agent's target writes only, in operations per second
    /// (overrides `--rate-limit` for writes; each agent of a shared
    /// migration has its own cap).
    #[arg(long = "target.rate-limit", env = "FERRY_TARGET_RATE_LIMIT", value_parser = clap::value_parser!(u32).range(1..))]
    pub target_rate_limit: Option<u32>,
    /// Where the agent listens (HTTPS).
    #[arg(long = "agent.listen", env = "FERRY_AGENT_LISTEN", default_value = ferry_agent::config::DEFAULT_LISTEN)]
    pub agent_listen: String,
    /// The agent's certificate (PEM); made and kept in the journal if not given.
    #[arg(long = "agent.cert", env = "FERRY_AGENT_CERT", requires = "agent_key")]
    pub agent_cert: Option<PathBuf>,
    /// The agent's private key (PEM).
    #[arg(long = "agent.key", env = "FERRY_AGENT_KEY", requires = "agent_cert")]
    pub agent_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    #[arg(long = "agent.client-ca", env = "FERRY_AGENT_CLIENT_CA")]
    pub agent_client_ca: Option<PathBuf>,
    /// A client certificate for the monitor, when the agent requires one.
    #[arg(
        long = "agent.client-cert",
        env = "FERRY_AGENT_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(
        long = "agent.client-key",
        env = "FERRY_AGENT_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// How the source is made read-only at cutover: auth (etcd roles) or external (you stop the writers).
    #[arg(
        long = "source.read-only",
        env = "FERRY_SOURCE_READ_ONLY",
        default_value = "auth"
    )]
    pub source_read_only: ReadOnlyMode,
    /// Fail instead of re-snapshotting when the source compacted past the journal.
    #[arg(long, env = "FERRY_NO_RESNAPSHOT")]
    pub no_resnapshot: bool,
    /// Start even though a source holds nothing (by default an empty source
    /// stops the pre-check: it usually means a wrong prefix or selection).
    #[arg(long, env = "FERRY_ALLOW_EMPTY_SOURCE")]
    pub allow_empty_source: bool,
    /// Longest one write to a target may take before it counts as failed
    /// and is retried, with the error shown in `status` (e.g. 30s, 2m).
    #[arg(
        long = "target.timeout",
        env = "FERRY_TARGET_TIMEOUT",
        default_value = "60s"
    )]
    pub target_timeout: String,
    /// Skip verification before the target is opened at cutover.
    #[arg(long, env = "FERRY_NO_VERIFY")]
    pub no_verify: bool,
    /// Keys per second the continuous verifier reads from source and target
    /// together while syncing (0: off, and the cutover compares everything);
    /// with --rate-limit, at most a quarter of it.
    #[arg(long = "verify.rate", env = "FERRY_VERIFY_RATE", default_value_t = ferry_agent::config::DEFAULT_VERIFY_RATE)]
    pub verify_rate: u64,
    /// Collection names of a cells:// migration: `v4` (later Cells v4, the
    /// code `cells admin config db add` goes with: every collection named
    /// `<service>_<name>`, e.g. activity_activities), `v4-early` (earlier v4:
    /// bare activity, chat and versions collections) or `none`.
    #[arg(
        long = "cells.prefixes",
        env = "FERRY_CELLS_PREFIXES",
        default_value = "v4",
        value_parser = clap::builder::PossibleValuesParser::new(ferry_agent::routes::cells_prefix_values())
    )]
    pub cells_prefixes: String,
    /// A Bolt entry of a cells:// migration that cannot be mapped (a value
    /// Cells itself could not read) and that the cutover may leave behind,
    /// named as `status` shows it: `<service>:<bucket path>/<key>`. Repeat
    /// for each.
    #[arg(
        long = "cells.accept-unmapped",
        env = "FERRY_CELLS_ACCEPT_UNMAPPED",
        value_delimiter = ','
    )]
    pub cells_accept_unmapped: Vec<String>,
    /// Publish the values of secret sources (Vault, a keyring, pydio.json)
    /// to a Kafka target as plain text, readable by every consumer of the
    /// topic. Refused without it.
    #[arg(long = "kafka.publish-secrets", env = "FERRY_KAFKA_PUBLISH_SECRETS")]
    pub kafka_publish_secrets: bool,
    /// How often a Vault source is looked at for changes, in milliseconds.
    #[arg(long = "vault.poll-ms", env = "FERRY_VAULT_POLL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub vault_poll_ms: u64,
}

/// How the CLI reaches an agent.
#[derive(Args, Debug, Clone)]
pub struct AgentConn {
    /// The agent's URL (default: from the journal's agent.json).
    #[arg(long, env = "FERRY_AGENT")]
    pub agent: Option<String>,
    /// The journal directory, where the agent's CA and token are.
    #[arg(long, env = "FERRY_JOURNAL", default_value = "ferry-journal")]
    pub journal: PathBuf,
    /// The CA that signed the agent's certificate (default: the journal's agent-ca.pem).
    #[arg(long = "agent.ca", env = "FERRY_AGENT_CA")]
    pub agent_ca: Option<PathBuf>,
    /// The control token (default: the journal's agent.token).
    #[arg(
        long = "agent.token",
        env = "FERRY_AGENT_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// A client certificate, for agents that require one.
    #[arg(
        long = "agent.client-cert",
        env = "FERRY_AGENT_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(
        long = "agent.client-key",
        env = "FERRY_AGENT_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub conn: AgentConn,
    /// Redraw every second until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    #[command(flatten)]
    pub conn: AgentConn,
    /// Skip the waits and stop now, without opening the target.
    #[arg(long)]
    pub abort: bool,
    /// Give up waiting for the cutover after this long (e.g. 90s, 10m).
    #[arg(long, default_value = "15m")]
    pub timeout: String,
    /// An unmapped source entry (as `status` names it,
    /// `<service>:<bucket path>/<key>`) that this cutover may leave behind;
    /// repeat or separate with commas.
    #[arg(long = "accept-unmapped", value_delimiter = ',')]
    pub accept_unmapped: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ServerModeArgs {
    /// The store to switch.
    #[arg(long, env = "FERRY_SOURCE")]
    pub source: String,
    /// readonly or default.
    #[arg(long)]
    pub mode: String,
    /// The journal of the migration that made it read-only, to restore exactly what it changed.
    #[arg(long, env = "FERRY_JOURNAL")]
    pub journal: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[arg(long, env = "FERRY_SOURCE")]
    pub source: String,
    /// Collection names of a cells:// migration (as for `start`).
    #[arg(
        long = "cells.prefixes",
        env = "FERRY_CELLS_PREFIXES",
        default_value = "v4",
        value_parser = clap::builder::PossibleValuesParser::new(ferry_agent::routes::cells_prefix_values())
    )]
    pub cells_prefixes: String,
    /// The copy to compare; a cells:// source takes its three targets.
    #[arg(
        long = "target",
        env = "FERRY_TARGET",
        required = true,
        value_delimiter = ' '
    )]
    pub targets: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Where a comparison by ranges keeps its progress, so that an
    /// interrupted `verify` of the same source and target resumes where it
    /// stopped (default: $XDG_STATE_HOME/ferry, else ~/.local/state/ferry,
    /// else the temporary directory's ferry/, one file per source and
    /// target).
    #[arg(long, env = "FERRY_VERIFY_PROGRESS")]
    pub progress: Option<std::path::PathBuf>,
    /// Compare everything again, ignoring what an interrupted run compared.
    #[arg(long)]
    pub restart: bool,
    /// At most this many keys or documents read a second, both sides
    /// counted (0: no bound).
    #[arg(long = "read-rate", default_value_t = 0)]
    pub read_rate: u64,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The journal directory holding agent.json.
    #[arg(long, env = "FERRY_JOURNAL")]
    pub journal: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Copy one document once, then check the copy byte for byte.
    Copy(ConfigCopyArgs),
}

#[derive(Args, Debug)]
pub struct ConfigCopyArgs {
    /// Where the document is: a JSON file (path or file://) or etcd://host:port/key.
    #[arg(long)]
    pub from: String,
    /// Where it goes (same forms).
    #[arg(long)]
    pub to: String,
    /// Keep following the source file and copy every change until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// Vault to Vault: copy every secret under the path with all its versions and metadata.
    #[arg(long, conflicts_with = "follow")]
    pub versions: bool,
}

#[derive(Subcommand, Debug)]
pub enum JournalCommand {
    /// Read every record and report damage with its shard and sequence.
    Verify(JournalDir),
    /// Show shards, checkpoints, or the records of one shard.
    Inspect(InspectArgs),
    /// Truncate each damaged shard to its last valid record, saying what was dropped.
    Repair(JournalDir),
    /// Append generated events, replay them, truncate, and verify: a tour of the journal.
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
pub struct JournalDir {
    /// The journal directory.
    #[arg(env = "FERRY_JOURNAL")]
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The journal directory.
    #[arg(env = "FERRY_JOURNAL")]
    pub dir: PathBuf,
    /// List the records of this shard.
    #[arg(long)]
    pub shard: Option<u32>,
    /// First sequence to list (with --shard).
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// How many records to list at most (with --shard).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Print JSON (one object; records as an array).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The journal directory (created; must be new or a previous demo's).
    #[arg(long, env = "FERRY_JOURNAL", default_value = "ferry-demo-journal")]
    pub journal: PathBuf,
    /// Events to append.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub events: u64,
    /// Shards to spread them over.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub shards: u32,
    /// Bytes per value.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(0..=(1 << 20)))]
    pub value_bytes: u32,
    /// Events per append batch.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// fsync policy: batch, never, or an interval such as 100ms.
    #[arg(long, env = "FERRY_FSYNC", default_value = "batch")]
    pub fsync: PersistPolicy,
}
