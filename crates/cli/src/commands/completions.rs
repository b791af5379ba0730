//! `ferry completions <shell>` and `ferry man`: generated from the same
//! clap definition that parses the command line (`clap_complete`,
//! `clap_mangen`), so they never drift from the flags.

use crate::cli::Cli;
use crate::error::CliError;
use clap::CommandFactory;
use ferry_core::ExitCode;

pub fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "ferry", &mut std::io::stdout());
    Ok(())
}

pub fn man() -> Result<(), CliError> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .map_err(|e| CliError::new(ExitCode::Runtime, format!("writing the man page: {e}")))
}
