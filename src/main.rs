//! `softmax-ce`: the command-line tool, thin over the library.
//!
//! All logic lives in the library; this binary parses arguments, calls it, and prints. Errors are
//! one line on stderr and a non-zero exit.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined, so scripts can grep it.
            eprintln!("softmax-ce: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
