//! Where the bundled assets live at run time.

use std::path::PathBuf;

/// The bundled `assets/` folder: beside the working directory when run from the repository,
/// else the one the binary was built from.
pub fn assets_dir() -> PathBuf {
    let local = PathBuf::from("assets");
    if local.join("corpus").is_dir() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets")
}

/// The demo corpus the default models were trained on.
pub fn demo_corpus_dir() -> PathBuf {
    assets_dir().join("corpus")
}
