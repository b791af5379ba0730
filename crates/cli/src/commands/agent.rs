//! `ferry agent --journal DIR`: the agent process `start` launches.

use super::start::runtime;
use crate::cli::AgentArgs;
use crate::error::CliError;
use ferry_agent::config::AgentConfig;
use ferry_agent::runtime::{AgentRun, Outcome};
use ferry_core::{ExitCode, StoreUrl};

fn urls(var: &str) -> Result<Vec<StoreUrl>, CliError> {
    let raw = std::env::var(var).map_err(|_| {
        CliError::new(
            ExitCode::Usage,
            format!("{var} is not set; the agent is started by `ferry start`, which sets it"),
        )
    })?;
    raw.split(' ')
        .filter(|u| !u.is_empty())
        .map(|u| StoreUrl::parse(u).map_err(CliError::from))
        .collect()
}

pub fn run(a: AgentArgs) -> Result<(), CliError> {
    let cfg = AgentConfig::load(&a.journal)
        .map_err(|e| CliError::new(ExitCode::Usage, e))?
        .ok_or_else(|| {
            CliError::new(
                ExitCode::Usage,
                format!(
                    "{} holds no agent.json; use `ferry start`",
                    a.journal.display()
                ),
            )
        })?;
    let sources = urls("FERRY_SOURCE")?;
    let targets = urls("FERRY_TARGET")?;
    let shown: Vec<String> = sources
        .iter()
        .chain(&targets)
        .map(ToString::to_string)
        .collect();
    let want: Vec<String> = cfg.sources.iter().chain(&cfg.targets).cloned().collect();
    if shown != want {
        return Err(CliError::new(
            ExitCode::Usage,
            "FERRY_SOURCE/FERRY_TARGET do not name the stores in agent.json; start the agent with `ferry start`",
        ));
    }
    let run = AgentRun {
        dir: a.journal.clone(),
        cfg,
        sources,
        targets,
    };
    match runtime()?
        .block_on(run.run())
        .map_err(|e| CliError::new(ExitCode::Runtime, e))?
    {
        Outcome::CutOver => {
            println!("cutover done; the agent exits");
            Ok(())
        }
        Outcome::Interrupted => {
            println!("stopped by a signal; `ferry start` with the same journal resumes");
            Ok(())
        }
        Outcome::Aborted(why) => Err(CliError::new(ExitCode::Runtime, why)),
    }
}
