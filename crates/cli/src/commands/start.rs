//! `ferry start`: pre-checks, then the agent (detached unless
//! `--foreground`), then a monitor of its progress. Killing the monitor
//! leaves the agent running; `start` again with the same journal resumes
//! (or, if the agent still runs, just monitors it).

use super::{monitor, precheck};
use crate::cli::StartArgs;
use crate::client::AgentTarget;
use crate::error::CliError;
use ferry_agent::config::{
    AgentConfig, DEFAULT_CUTOVER_MAX_LAG_EVENTS, DEFAULT_CUTOVER_TIMEOUT_MS,
};
use ferry_agent::runtime::{AgentRun, Outcome};
use ferry_core::{ExitCode, StoreUrl};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const AGENT_LOG: &str = "agent.log";

fn parse_all(urls: &[String]) -> Result<Vec<StoreUrl>, CliError> {
    urls.iter()
        .filter(|u| !u.trim().is_empty())
        .map(|u| StoreUrl::parse(u).map_err(CliError::from))
        .collect()
}

pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CliError::new(
                ExitCode::Runtime,
                format!("cannot start the async runtime: {e}"),
            )
        })
}

fn config_for(
    args: &StartArgs,
    sources: &[StoreUrl],
    targets: &[StoreUrl],
    target_timeout: std::time::Duration,
) -> AgentConfig {
    AgentConfig {
        sources: sources.iter().map(ToString::to_string).collect(),
        targets: targets.iter().map(ToString::to_string).collect(),
        shards: args.shards,
        listen: args.agent_listen.clone(),
        cert: args.agent_cert.clone(),
        key: args.agent_key.clone(),
        client_ca: args.agent_client_ca.clone(),
        rate_limit_ops: args.rate_limit,
        target_rate_limit_ops: args.target_rate_limit,
        source_read_only: args.source_read_only,
        resnapshot_on_compaction: !args.no_resnapshot,
        verify_on_cutover: !args.no_verify,
        verify_rate: args.verify_rate,
        vault_poll_ms: args.vault_poll_ms,
        cells_prefixes: Some(args.cells_prefixes.clone()),
        cells_accept_unmapped: args.cells_accept_unmapped.clone(),
        kafka_publish_secrets: args.kafka_publish_secrets,
        cutover_max_lag_events: DEFAULT_CUTOVER_MAX_LAG_EVENTS,
        cutover_timeout_ms: DEFAULT_CUTOVER_TIMEOUT_MS,
        apply_timeout_ms: target_timeout.as_millis() as u64,
        journal_url: args.journal_url.clone(),
        coordinator: args.coordinator.clone(),
    }
}

pub fn run(args: StartArgs) -> Result<(), CliError> {
    let sources = parse_all(&args.sources)?;
    let targets = parse_all(&args.targets)?;
    let target_timeout = super::stop::parse_duration("--target.timeout", &args.target_timeout)?;
    let cfg = config_for(&args, &sources, &targets, target_timeout);
    let registry = ferry_agent::routes::registry(cfg.connector_options());
    let routes = ferry_agent::routes::plan(&registry, &sources, &targets, args.shards)
        .map_err(|e| CliError::new(ExitCode::Usage, e))?
        .routes;
    cfg.validate()
        .map_err(|e| CliError::new(ExitCode::Usage, e))?;
    let dir = args.journal.as_path();
    let existing = AgentConfig::load(dir).map_err(|e| CliError::new(ExitCode::Usage, e))?;
    if let Some(old) = &existing {
        if old.sources != cfg.sources || old.targets != cfg.targets {
            return Err(CliError::new(
                ExitCode::Usage,
                format!(
                    "journal {} belongs to the migration {} → {}; use another --journal for a different one",
                    dir.display(),
                    old.sources.join(" "),
                    old.targets.join(" ")
                ),
            ));
        }
    }
    let rt = runtime()?;
    if precheck::agent_running(dir) && existing.is_some() && !args.check_only {
        println!(
            "an agent is already running this migration (journal {}); monitoring it",
            dir.display()
        );
        if args.no_monitor {
            return Ok(());
        }
        let target = AgentTarget::resolve(
            dir,
            None,
            None,
            None,
            args.client_cert.clone().zip(args.client_key.clone()),
        )?;
        return rt.block_on(monitor::follow(&target, None, false));
    }
    // Local checks first: they are cheap and need no network.
    precheck::journal(dir, cfg.journal_url.is_some())?;
    // A journal in Kafka that had a writer: this agent resumes it (or, with
    // --coordinator, joins the agents already on it).
    let kafka = match &cfg.journal_url {
        Some(url) => rt.block_on(precheck::kafka_journal(url)),
        None => None,
    };
    let resuming = existing.is_some() || kafka.as_ref().is_some_and(|j| j.current_epoch() > 0);
    let external = args.source_read_only == ferry_agent::config::ReadOnlyMode::External;
    for route in &routes {
        let source = route.source.url().to_string();
        let checkpoint = match (&kafka, resuming) {
            (_, false) => None,
            (None, true) => precheck::checkpoint(dir, &source),
            (Some(j), true) => ferry_journal::Journal::source_checkpoint(j, &source)
                .ok()
                .flatten(),
        };
        let ctx = ferry_connect::CheckContext {
            force: args.force,
            resuming,
            external_read_only: external,
            resnapshot: !args.no_resnapshot,
            shards: args.shards,
            checkpoint,
            allow_empty_source: args.allow_empty_source,
        };
        rt.block_on(precheck::route(route, &ctx))?;
    }
    if args.check_only {
        println!("pre-checks passed; --check-only: no data was sent and nothing was written");
        return Ok(());
    }
    // Create the journal itself first, so the directory is a journal
    // before the agent's own files appear in it (with the journal in
    // Kafka, the directory holds only the agent's files).
    if cfg.journal_url.is_none() {
        drop(ferry_journal_rocks::RocksJournal::open(
            dir,
            ferry_journal_rocks::OpenMode::Create,
            ferry_journal::PersistPolicy::EveryBatch,
        )?);
    } else {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError::new(
                ExitCode::Runtime,
                format!("cannot create the agent's directory {}: {e}", dir.display()),
            )
        })?;
    }
    cfg.save(dir)
        .map_err(|e| CliError::new(ExitCode::Runtime, e))?;
    drop(kafka);
    if resuming {
        println!("resuming the migration recorded in {}", dir.display());
    }
    if args.foreground {
        let run = AgentRun {
            dir: dir.to_path_buf(),
            cfg,
            sources,
            targets,
        };
        return match rt
            .block_on(run.run())
            .map_err(|e| CliError::new(ExitCode::Runtime, e))?
        {
            Outcome::CutOver => Ok(()),
            Outcome::Interrupted => Ok(()),
            Outcome::Aborted(why) => Err(CliError::new(ExitCode::Runtime, why)),
        };
    }
    let child = spawn_agent(dir, &args)?;
    let target = AgentTarget::resolve(
        dir,
        None,
        None,
        None,
        args.client_cert.clone().zip(args.client_key.clone()),
    )?;
    let status = rt.block_on(wait_ready(&target, child, dir))?;
    println!(
        "agent {child} running at {}; `ferry status --journal {}` shows progress, `ferry stop --journal {}` cuts over",
        target.url,
        dir.display(),
        dir.display()
    );
    if status.is_none() {
        println!("the agent requires client certificates: monitor it with `ferry status --agent.client-cert … --agent.client-key …`");
        return Ok(());
    }
    if args.no_monitor {
        return Ok(());
    }
    rt.block_on(monitor::follow(&target, None, false))
}

fn spawn_agent(dir: &Path, args: &StartArgs) -> Result<u32, CliError> {
    let exe = std::env::current_exe().map_err(|e| {
        CliError::new(
            ExitCode::Runtime,
            format!("cannot find the ferry binary: {e}"),
        )
    })?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(AGENT_LOG))
        .map_err(|e| {
            CliError::new(
                ExitCode::Runtime,
                format!("cannot open {}: {e}", dir.join(AGENT_LOG).display()),
            )
        })?;
    let err_log = log
        .try_clone()
        .map_err(|e| CliError::new(ExitCode::Runtime, e.to_string()))?;
    // The full URLs (credentials included) go through the environment,
    // which only this user can read, never through argv or agent.json.
    let child = Command::new(exe)
        .arg("agent")
        .arg("--journal")
        .arg(dir)
        .env("FERRY_SOURCE", args.sources.join(" "))
        .env("FERRY_TARGET", args.targets.join(" "))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        // Its own process group: Ctrl-C on the monitor does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| CliError::new(ExitCode::Runtime, format!("cannot start the agent: {e}")))?;
    Ok(child.id())
}

/// Waits until the agent answers; `None` when it answers only to client
/// certificates and this CLI has none.
async fn wait_ready(
    target: &AgentTarget,
    pid: u32,
    dir: &Path,
) -> Result<Option<ferry_agent::api::StatusResponse>, CliError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match target.status().await {
            Ok(s) if s.pid == pid => return Ok(Some(s)),
            Err(e)
                if target.client_cert.is_none()
                    && e.message.contains("requires a client certificate") =>
            {
                return Ok(None)
            }
            _ if !std::path::Path::new(&format!("/proc/{pid}")).exists() || zombie(pid) => {
                let log = std::fs::read_to_string(dir.join(AGENT_LOG)).unwrap_or_default();
                let last = log
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("no output");
                return Err(CliError::new(
                    ExitCode::Runtime,
                    format!(
                        "the agent exited during start-up: {}",
                        last.trim_start_matches("ferry: ")
                    ),
                ));
            }
            _ if Instant::now() > deadline => {
                return Err(CliError::new(
                    ExitCode::Runtime,
                    format!(
                        "the agent did not answer within 60 s; see {}",
                        dir.join(AGENT_LOG).display()
                    ),
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(150)).await,
        }
    }
}

/// A child that exited but was not reaped (we never wait on the agent).
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}
