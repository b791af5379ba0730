//! The command line: every flag also reads an environment variable.

use clap::{Args, Parser, Subcommand};
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
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the pre-checks for a migration (this build: --check-only).
    Start(StartArgs),
    /// Inspect, verify or repair a journal directory.
    #[command(subcommand)]
    Journal(JournalCommand),
}

#[derive(Args, Debug)]
pub struct StartArgs {
    // URLs are parsed by the command, not by clap: clap's error would echo
    // the raw value, password included.
    /// A source store URL (repeatable; in FERRY_SOURCE, separate with spaces).
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
    /// The journal directory.
    #[arg(long, env = "FERRY_JOURNAL", default_value = "ferry-journal")]
    pub journal: PathBuf,
    /// Number of shards per source.
    #[arg(long, env = "FERRY_SHARDS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub shards: u32,
    /// Run the pre-checks, print them, and stop without sending any data.
    #[arg(long, env = "FERRY_CHECK_ONLY")]
    pub check_only: bool,
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
