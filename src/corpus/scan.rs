//! Finding the MIDI files of a folder.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Every `.mid` / `.midi` file (any case) under `root`, recursively, sorted by path. Hidden
/// folders are skipped; an unreadable root is an error, unreadable subfolders are skipped.
/// Symbolic links are followed, but each real folder is visited once (a link loop ends), and
/// only regular files are listed (a FIFO or device named `x.mid` would block a read forever).
pub fn scan_midi_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    scan_midi_files_until(root, &|| false)
}

/// As [`scan_midi_files`], giving up with `Interrupted` once `cancelled` says so.
pub fn scan_midi_files_until(
    root: &Path,
    cancelled: &dyn Fn() -> bool,
) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut visited = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    let mut first = true;
    while let Some(dir) = stack.pop() {
        if cancelled() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "the scan was cancelled",
            ));
        }
        // The canonical path names the real folder behind any chain of links.
        let real = match std::fs::canonicalize(&dir) {
            Ok(real) => real,
            Err(e) if first => return Err(e),
            Err(_) => continue,
        };
        if !visited.insert(real) {
            continue;
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if first => return Err(e),
            Err(_) => continue,
        };
        first = false;
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            // Follows links: what the entry is, not what the link is.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if !hidden {
                    stack.push(path);
                }
            } else if meta.is_file() && is_midi_path(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

pub fn is_midi_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("mid") || e.eq_ignore_ascii_case("midi"))
}

/// The path relative to `root` with `/` separators, as MAESTRO's csv writes it.
pub fn relative_key(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}
