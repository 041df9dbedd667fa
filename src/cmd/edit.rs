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
    let model_args = args.model.clone();
    // A device that cannot be opened is said before the terminal changes.
    let device = args.model.device.open()?;
    crate::tui::run(EditOptions {
        file: args.file.clone(),
        config,
        model: Box::new(move || super::load_model(&model_args, device, Default::default())),
    })
}
