//! The `infill` binary: parse arguments, run, map the result to an exit code.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use infill::cli::{Cli, Command, TokenizerCommand};

fn main() -> ExitCode {
    infill::model::keep_freed_memory();
    let cli = Cli::parse_from(with_default_command(std::env::args_os().collect()));
    infill::logging::init(cli.log_level.level());
    tracing::info!(
        "infill {} {}",
        env!("CARGO_PKG_VERSION"),
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let result = match &cli.command {
        Command::Edit(args) => infill::cmd::edit::run(args),
        Command::Lsp(args) => infill::cmd::lsp::run(args),
        Command::Complete(args) => infill::cmd::complete::run(args),
        Command::Trim(args) => infill::cmd::trim::run(args),
        Command::Train(args) => infill::cmd::train::run(args),
        Command::Eval(args) => infill::cmd::eval::run(args),
        Command::Score(args) => infill::cmd::score::run(args),
        Command::Models { command } => infill::cmd::models::run(command.as_ref()),
        Command::Tokenizer {
            command: TokenizerCommand::Train(args),
        } => infill::cmd::train::tokenizer(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (`infill complete ... | head`) is not an error.
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            let message = user_message(&err);
            tracing::error!("{message}");
            eprintln!("infill: {message}");
            ExitCode::from(2)
        }
    }
}

/// Whether `err` comes from writing to a pipe whose reader has gone, directly or through JSON.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(BrokenPipe))
    })
}

/// The error and its causes on one line. Only the first line of each: some library errors
/// (candle's, when RUST_BACKTRACE is set) carry a backtrace after their message, not for users.
/// A cause whose text the line already holds (an error that prints its source) is said once.
fn user_message(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let text = text.lines().next().unwrap_or_default();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

/// `infill FILE` means `infill edit FILE`: a first argument that is neither a subcommand nor an
/// option is a file to edit.
fn with_default_command(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let Some(first) = args.get(1).and_then(|a| a.to_str()) else {
        return args;
    };
    let known = Cli::command()
        .get_subcommands()
        .any(|c| c.get_name() == first || c.get_all_aliases().any(|a| a == first))
        || first == "help";
    if !known && !first.starts_with('-') {
        args.insert(1, "edit".into());
    }
    args
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_backtrace_in_an_error_does_not_reach_the_user() {
        let err = anyhow::anyhow!(
            "268 positions exceed the model's context of 256\n   0: bt\n  at x.rs:1"
        )
        .context("scoring /tmp/a.py");
        assert_eq!(
            super::user_message(&err),
            "scoring /tmp/a.py: 268 positions exceed the model's context of 256"
        );
    }

    /// An error that prints its source (thiserror's `{source}`) is not said twice.
    #[test]
    fn a_cause_the_message_already_holds_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("config.json: {source}")]
        struct Config {
            source: std::io::Error,
        }
        let err = anyhow::Error::new(Config {
            source: std::io::Error::other("is not valid JSON: EOF while parsing"),
        });
        assert_eq!(
            super::user_message(&err),
            "config.json: is not valid JSON: EOF while parsing"
        );
    }

    #[test]
    fn a_closed_pipe_is_not_an_error_even_through_json() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(super::is_broken_pipe(&anyhow::Error::new(
            serde_json::Error::io(io)
        )));
        let other = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(!super::is_broken_pipe(&anyhow::Error::new(
            serde_json::Error::io(other)
        )));
    }
}
