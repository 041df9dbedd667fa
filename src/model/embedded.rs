//! The default model compiled into the binary (`assets/model/`), when the build found one.

use super::load::ModelFiles;

/// Name under which the embedded model appears in messages and `--json` output.
pub const NAME: &str = "infill-default (embedded)";

/// `infill --version`: the version and which default model is built in.
#[cfg(infill_default_model)]
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ndefault model: built in (assets/model/ at build time; its recipe and figures are in assets/README.md)"
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
