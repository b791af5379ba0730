//! `ferry`: the command-line entry point. Parsing lives in [`cli`], each
//! command in [`commands`]; this file only wires them and turns an error
//! into one line on stderr and the documented exit code.

mod cli;
mod client;
mod commands;
mod config_file;
mod error;

use clap::Parser;

fn main() {
    // Everything Ferry creates (journal, token, key files) is private to its
    // user; RocksDB creates its own files, so the process umask is the one
    // place to say so.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(e) = config_file::apply(&argv) {
        eprintln!("ferry: {e}");
        std::process::exit(ferry_core::ExitCode::Usage.code());
    }
    let args = cli::Cli::parse_from(argv);
    init_logging();
    let code = match commands::run(args) {
        Ok(()) => ferry_core::ExitCode::Success,
        Err(e) => {
            eprintln!("ferry: {e}");
            e.code
        }
    };
    std::process::exit(code.code());
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
