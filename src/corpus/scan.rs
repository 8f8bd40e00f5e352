//! Finding the MIDI files of a folder.

use std::path::{Path, PathBuf};

/// Every `.mid` / `.midi` file (any case) under `root`, recursively, sorted by path. Hidden
/// folders are skipped; an unreadable root is an error, unreadable subfolders are skipped.
pub fn scan_midi_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let mut first = true;
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if first => return Err(e),
            Err(_) => continue,
        };
        first = false;
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() || (kind.is_symlink() && path.is_dir()) {
                if !hidden {
                    stack.push(path);
                }
            } else if is_midi_path(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
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
