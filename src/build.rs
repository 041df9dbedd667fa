//! Build script: embeds the default model when `assets/model/` holds one.
//!
//! The model directory (config.json, tokenizer.json, model.safetensors) is produced by `infill train`
//! (see assets/README.md). Until it exists the binary builds without a default and `--model` is
//! required; the cfg `infill_default_model` tells the code which.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(infill_default_model)");
    println!("cargo::rustc-check-cfg=cfg(infill_default_model_card)");
    // The folder exists (assets/README.md); pointing at a missing path would rerun this every build.
    println!("cargo::rerun-if-changed=assets");
    println!("cargo::rerun-if-changed=src/build.rs");
    let dir = Path::new("assets/model");
    let complete = ["config.json", "tokenizer.json", "model.safetensors"]
        .iter()
        .all(|f| dir.join(f).is_file());
    if complete {
        println!("cargo::rustc-cfg=infill_default_model");
        // `infill models export` copies the run's training.json (without the loss curve).
        if dir.join("training.json").is_file() {
            println!("cargo::rustc-cfg=infill_default_model_card");
        }
    }
}
