//! `ferry status [--watch] [--json]`.

use super::start::runtime;
use crate::cli::{AgentConn, StatusArgs};
use crate::client::AgentTarget;
use crate::error::CliError;
use std::io::IsTerminal;
use std::time::Duration;

pub fn target(c: &AgentConn) -> Result<AgentTarget, CliError> {
    AgentTarget::resolve(
        &c.journal,
        c.agent.clone(),
        c.agent_ca.clone(),
        c.token.clone(),
        c.client_cert.clone().zip(c.client_key.clone()),
    )
}

pub fn run(a: StatusArgs) -> Result<(), CliError> {
    let t = target(&a.conn)?;
    let rt = runtime()?;
    rt.block_on(async {
        loop {
            let s = t.status().await?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).expect("status serialises")
                );
            } else if a.watch && std::io::stdout().is_terminal() {
                // Redraw in place: home, clear, table.
                let width = super::monitor::watch_width();
                print!(
                    "\x1b[H\x1b[2J{}",
                    super::monitor::fit(&super::monitor::table(&s), width)
                );
            } else {
                print!("{}", super::monitor::table(&s));
            }
            if !a.watch {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}
