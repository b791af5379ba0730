//! One module per command.

mod journal;
mod start;

use crate::cli::{Cli, Command, JournalCommand};
use crate::error::CliError;

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Start(a) => start::run(a),
        Command::Journal(JournalCommand::Verify(a)) => journal::verify(&a.dir),
        Command::Journal(JournalCommand::Inspect(a)) => journal::inspect(&a),
        Command::Journal(JournalCommand::Repair(a)) => journal::repair(&a.dir),
        Command::Journal(JournalCommand::Demo(a)) => journal::demo(&a),
    }
}
