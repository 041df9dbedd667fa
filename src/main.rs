//! The `infill` binary: parse arguments, run, map the result to an exit code.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use infill::cli::{Cli, Command, TokenizerCommand};

fn main() -> ExitCode {
    let cli = Cli::parse_from(with_default_command(std::env::args_os().collect()));
    let result = match &cli.command {
        Command::Edit(args) => infill::tui::run(args),
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
            if err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("infill: {}", chain.join(": "));
            ExitCode::from(2)
        }
    }
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
