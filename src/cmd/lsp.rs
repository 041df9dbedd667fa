//! `infill lsp`: the settings file and the flags, then the language server on standard input and
//! output.

use crate::cli::LspArgs;
use crate::lsp::{Exit, Options};
use crate::tui::Config;

pub fn run(args: &LspArgs) -> anyhow::Result<()> {
    let config = Config::resolve(args.config.as_deref())?;
    let options = Options {
        max_tokens: config.max_tokens,
        min_confidence: config.min_confidence,
        shift_reuse: !config.exact_cache,
        memory: config.memory,
        memory_prompt: config.memory_prompt,
        overlay: args.overlay,
        cache: crate::memory::Store::cache_dir(),
        ..Options::default()
    };
    let model_args = args.model.clone();
    let device = args.model.device.open()?;
    let exit = crate::lsp::serve(
        std::io::BufReader::new(std::io::stdin()),
        std::io::stdout().lock(),
        Box::new(move |downloads| super::load_model(&model_args, device, downloads)),
        options,
    )?;
    tracing::info!("lsp: session ended ({exit:?})");
    if exit == Exit::Abrupt {
        // The protocol's exit code for a client that left without asking for shutdown.
        std::process::exit(1);
    }
    Ok(())
}
