//! `infill edit`: the settings file and the flags that override it, then the editor.

use crate::cli::EditArgs;
use crate::tui::{Config, EditOptions};

pub fn run(args: &EditArgs) -> anyhow::Result<()> {
    let mut config = Config::resolve(args.config.as_deref())?;
    if let Some(ms) = args.debounce_ms {
        config.debounce_ms = ms;
    }
    if args.no_completions {
        config.completions = false;
    }
    // The editor loads the base model alone and applies adapters at run time, so that F7
    // switches between them without loading it again.
    let mut model_args = args.model.clone();
    let adapters = std::mem::take(&mut model_args.adapter);
    // A device or an adapter that cannot be opened is said before the terminal changes.
    let device = args.model.device.open()?;
    for dir in &adapters {
        crate::model::adapter::Adapter::read(dir)?;
    }
    crate::tui::run(EditOptions {
        file: args.file.clone(),
        config,
        model: Box::new(move || super::load_model(&model_args, device, Default::default())),
        adapters,
    })
}
