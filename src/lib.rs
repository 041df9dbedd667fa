//! infill: code completion in the terminal with a local fill-in-the-middle model.
//!
//! `text` (documents, positions, display widths) knows nothing of models or terminals; `model`
//! runs networks in Candle; `complete` is the one pipeline every caller uses; `worker` runs it on its
//! own thread for `tui`, the editor; `cli` and `cmd` are the command-line front end.

/// `print!` that returns the write's error instead of panicking: standard output closed early
/// (`infill eval | head`) ends a command quietly.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*)
    }};
}

/// `println!` that returns the write's error instead of panicking (see [`out!`]).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
    }};
}

pub mod cli;
pub mod cmd;
pub mod complete;
pub mod eval;
pub mod files;
pub mod hash;
pub mod logging;
pub mod lsp;
pub mod memory;
pub mod model;
pub mod progress;
pub mod report;
pub mod rng;
pub mod syntax;
pub mod text;
pub mod train;
pub mod tui;
pub mod worker;
