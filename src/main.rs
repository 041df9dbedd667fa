//! The `infill` binary: parse arguments, run, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;
use infill::cli::{Cli, Command, TokenizerCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Complete(args) => infill::cmd::complete::run(args),
        Command::Trim(args) => infill::cmd::trim::run(args),
        Command::Train(args) => infill::cmd::train::run(args),
        Command::Eval(args) => infill::cmd::eval::run(args),
        Command::Score(args) => infill::cmd::score::run(args),
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
