//! `softmax-ce`: the command-line tool, thin over the library.
//!
//! All logic lives in the library; this binary parses arguments, calls it, and prints. Every
//! failure is one line on stderr and a non-zero exit: 1 for a failed command, 2 for bad
//! arguments, 141 (quietly) when standard output's reader has gone, as for a tool killed by
//! `SIGPIPE`. A command that fails replaces none of its output files.

#[macro_use]
mod cli;

use std::process::ExitCode;

use clap::Parser;

/// The exit status of a command cut short by a closed standard output: 128 + SIGPIPE, what a
/// shell reports for the C tools that `head` stops.
const BROKEN_PIPE: u8 = 141;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => return usage(&e),
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.chain().any(|c| c.is::<cli::output::BrokenPipe>()) => {
            ExitCode::from(BROKEN_PIPE)
        }
        Err(e) => {
            note!("softmax-ce: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout as clap prints them; an argument error becomes one line.
fn usage(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let status = u8::try_from(e.exit_code()).unwrap_or(2);
    match e.kind() {
        // No command at all: the help, on stderr (where a failure has nowhere to go), status 2.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(status)
        }
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => match e.print() {
            Ok(()) => ExitCode::from(status),
            Err(io) => match cli::output::stdout_error(io) {
                pipe if pipe.is::<cli::output::BrokenPipe>() => ExitCode::from(BROKEN_PIPE),
                other => {
                    note!("softmax-ce: error: {other}");
                    ExitCode::FAILURE
                }
            },
        },
        _ => {
            // clap's first line is the error; the rest (usage, tips) would break one-line output.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            note!("softmax-ce: error: {first} (see softmax-ce --help)");
            ExitCode::from(status)
        }
    }
}

/// The chain of causes on one line, each said once: a library error that already quotes its
/// OS error is not followed by that error again, and line breaks inside any message (wgpu's
/// are multi-line) become spaces, so scripts can grep the line.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || msg.ends_with(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}
