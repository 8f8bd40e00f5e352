//! Writing files so that a crash never leaves a half-written one in place.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to a temporary sibling of `path`, syncs it, and renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_sibling(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Checks, before any work, that `path` may be written: a command's output is a new file unless
/// the user passed `--overwrite`, and a folder is never replaced.
pub fn check_output(path: &Path, overwrite: bool) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(format!(
            "{} is a folder: give the name of a file to write",
            path.display()
        )),
        Ok(_) if !overwrite => Err(format!(
            "{} already exists: choose another name, or pass --overwrite to replace it",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// `dir/.name.tmp-PID`: hidden, in the same directory (so the rename is atomic), unique per process.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
