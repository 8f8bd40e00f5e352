//! Every take is written to this session's folder as soon as it is made, so a crash or a kill
//! loses nothing: the next start finds the folders of sessions that did not close cleanly and
//! offers their takes back.
//!
//! Layout: `ROOT/session-<start ms>-<pid>/take-001.mid ...`. A session removes its own folder
//! when it closes with nothing left to keep; it only ever deletes `take-*.mid` files and
//! `session-*` folders under ROOT, which it created.

use std::path::{Path, PathBuf};

use crate::midi::{read_midi, write_midi};
use crate::performance::Performance;

pub struct TakeStore {
    root: PathBuf,
    folder: PathBuf,
    kept: usize,
}

impl TakeStore {
    /// A store for this session under `root` (created when the first take is kept).
    pub fn new(root: &Path) -> TakeStore {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        TakeStore {
            root: root.to_path_buf(),
            folder: root.join(format!("session-{stamp}-{}", std::process::id())),
            kept: 0,
        }
    }

    /// How many takes this session has kept.
    pub fn kept(&self) -> usize {
        self.kept
    }

    /// Writes a take (atomically) as the next `take-NNN.mid`.
    pub fn keep(&mut self, take: &Performance) -> Result<PathBuf, String> {
        std::fs::create_dir_all(&self.folder)
            .map_err(|e| format!("cannot keep the take in {}: {e}", self.folder.display()))?;
        let path = self.folder.join(format!("take-{:03}.mid", self.kept + 1));
        write_midi(take, &path).map_err(|e| e.to_string())?;
        self.kept += 1;
        Ok(path)
    }

    /// Takes left by earlier sessions that did not close cleanly, oldest first.
    pub fn left_by_earlier_sessions(&self) -> Vec<PathBuf> {
        let mut takes = Vec::new();
        for folder in self.earlier_folders() {
            if let Ok(entries) = std::fs::read_dir(&folder) {
                let mut found: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| is_take_file(p))
                    .collect();
                found.sort();
                takes.extend(found);
            }
        }
        takes
    }

    /// Reads the earlier sessions' takes (skipping any that cannot be read, with the reason).
    pub fn restore_earlier(&self) -> (Vec<(String, Performance)>, Vec<String>) {
        let (mut restored, mut problems) = (Vec::new(), Vec::new());
        for path in self.left_by_earlier_sessions() {
            match read_midi(&path) {
                Ok(perf) => restored.push((path.display().to_string(), perf)),
                Err(e) => problems.push(e.to_string()),
            }
        }
        (restored, problems)
    }

    /// Deletes the earlier sessions' takes (after they were restored, or on the user's word).
    pub fn discard_earlier(&self) {
        for folder in self.earlier_folders() {
            remove_session_folder(&folder);
        }
    }

    /// Deletes this session's takes (the user said Discard, or everything was saved).
    pub fn discard_own(&mut self) {
        remove_session_folder(&self.folder);
        self.kept = 0;
    }

    fn earlier_folders(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut folders: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_dir()
                    && *p != self.folder
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("session-"))
            })
            .collect();
        folders.sort();
        folders
    }
}

fn is_take_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| {
        let n = n.to_string_lossy();
        n.starts_with("take-") && n.ends_with(".mid")
    })
}

/// Removes the takes in a session folder, then the folder if nothing else is in it.
fn remove_session_folder(folder: &Path) {
    if let Ok(entries) = std::fs::read_dir(folder) {
        for path in entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_take_file(p))
        {
            let _ = std::fs::remove_file(path);
        }
    }
    let _ = std::fs::remove_dir(folder);
}

/// `$XDG_DATA_HOME/echoai/sessions`, else `~/.local/share/echoai/sessions`, else the temp dir.
pub fn default_session_root() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    data.unwrap_or_else(std::env::temp_dir)
        .join("echoai")
        .join("sessions")
}
