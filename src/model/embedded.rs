//! The default model compiled into the binary (`assets/model/`), when the build found one.

use super::load::ModelFiles;

/// Name under which the embedded model appears in messages and `--json` output.
pub const NAME: &str = "infill-default (embedded)";

/// `infill --version`: the version and which default model is built in.
#[cfg(infill_default_model)]
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ndefault model: built in (`infill models` describes it; recipe and figures in assets/README.md)"
);

/// `infill --version`: the version and which default model is built in.
#[cfg(not(infill_default_model))]
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ndefault model: none built in; pass --model DIR|HUB_ID (assets/README.md says how to build one in)"
);

/// The embedded model's files, or `None` when this binary was built without one.
#[cfg(infill_default_model)]
pub fn files() -> Option<ModelFiles> {
    macro_rules! asset {
        ($file:literal) => {
            super::load::Blob::Static {
                label: concat!("<embedded>/", $file),
                bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/model/", $file)),
            }
        };
    }
    Some(ModelFiles {
        name: NAME.to_string(),
        config: asset!("config.json"),
        tokenizer: asset!("tokenizer.json"),
        weights: vec![asset!("model.safetensors")],
    })
}

/// The embedded model's files, or `None` when this binary was built without one.
#[cfg(not(infill_default_model))]
pub fn files() -> Option<ModelFiles> {
    None
}

/// The default model's `training.json` (how it was trained, its held-out figures), when built in.
#[cfg(infill_default_model_card)]
pub fn training() -> Option<&'static str> {
    Some(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/model/training.json"
    )))
}

/// The default model's `training.json` (how it was trained, its held-out figures), when built in.
#[cfg(not(infill_default_model_card))]
pub fn training() -> Option<&'static str> {
    None
}
