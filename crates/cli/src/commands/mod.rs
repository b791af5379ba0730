//! One module per command.

mod agent;
mod completions;
mod config;
mod journal;
mod mode;
mod monitor;
mod precheck;
mod start;
mod status;
mod stop;
mod verify;

use crate::cli::{Cli, Command, ConfigCommand, JournalCommand};
use crate::error::CliError;

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Start(a) => start::run(a),
        Command::Status(a) => status::run(a),
        Command::Stop(a) => stop::run(a),
        Command::SetServerMode(a) => mode::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Agent(a) => agent::run(a),
        Command::Config(ConfigCommand::Copy(a)) => config::copy(a),
        Command::Journal(JournalCommand::Verify(a)) => journal::verify(&a.dir),
        Command::Journal(JournalCommand::Inspect(a)) => journal::inspect(&a),
        Command::Journal(JournalCommand::Repair(a)) => journal::repair(&a.dir),
        Command::Journal(JournalCommand::Demo(a)) => journal::demo(&a),
        Command::Completions(a) => completions::completions(a.shell),
        Command::Man => completions::man(),
    }
}
