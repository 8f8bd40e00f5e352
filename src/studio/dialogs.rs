//! File dialogs behind a trait: rfd in the real window, a scripted fake in tests (rfd's dialogs
//! return nothing without a display).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::path_entry::timed;

pub trait Dialogs {
    fn open_midi(&self) -> Option<PathBuf>;
    fn save_midi(&self, suggested: &str) -> Option<PathBuf>;
    fn save_wav(&self, suggested: &str) -> Option<PathBuf>;
    fn pick_folder(&self, title: &str) -> Option<PathBuf>;
    fn open_soundfont(&self) -> Option<PathBuf>;
    /// Whether a dialog since the last call answered nothing too fast to have been shown (no
    /// xdg-desktop-portal): the studio says so instead of looking like a cancel.
    fn take_unopened(&self) -> bool {
        false
    }
}

#[derive(Default)]
pub struct RfdDialogs {
    unopened: AtomicBool,
}

impl RfdDialogs {
    fn noted<T>(&self, dialog: impl FnOnce() -> Option<T>) -> Option<T> {
        let (answer, failed) = timed(dialog);
        if failed {
            self.unopened.store(true, Ordering::SeqCst);
        }
        answer
    }
}

fn start_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
}

impl Dialogs for RfdDialogs {
    fn open_midi(&self) -> Option<PathBuf> {
        let mut d = rfd::FileDialog::new().add_filter("MIDI", &["mid", "midi", "MID", "MIDI"]);
        if let Some(dir) = start_dir() {
            d = d.set_directory(dir);
        }
        self.noted(|| d.pick_file())
    }

    fn save_midi(&self, suggested: &str) -> Option<PathBuf> {
        self.noted(|| {
            rfd::FileDialog::new()
                .add_filter("MIDI", &["mid"])
                .set_file_name(suggested)
                .save_file()
        })
    }

    fn save_wav(&self, suggested: &str) -> Option<PathBuf> {
        self.noted(|| {
            rfd::FileDialog::new()
                .add_filter("WAV audio", &["wav"])
                .set_file_name(suggested)
                .save_file()
        })
    }

    fn pick_folder(&self, title: &str) -> Option<PathBuf> {
        self.noted(|| rfd::FileDialog::new().set_title(title).pick_folder())
    }

    fn open_soundfont(&self) -> Option<PathBuf> {
        self.noted(|| {
            rfd::FileDialog::new()
                .add_filter("SoundFont", &["sf2", "SF2"])
                .pick_file()
        })
    }

    fn take_unopened(&self) -> bool {
        self.unopened.swap(false, Ordering::SeqCst)
    }
}

/// Answers every dialog with the next scripted path (or nothing).
#[derive(Clone, Default)]
pub struct FakeDialogs {
    pub answers: Arc<Mutex<Vec<PathBuf>>>,
    /// A dialog with no scripted answer is one that could not open, as rfd's without a portal.
    unopened: Arc<AtomicBool>,
}

impl FakeDialogs {
    pub fn answer(&self, path: &Path) {
        if let Ok(mut a) = self.answers.lock() {
            a.push(path.to_path_buf());
        }
    }

    fn next(&self) -> Option<PathBuf> {
        let answer = self
            .answers
            .lock()
            .ok()
            .and_then(|mut a| (!a.is_empty()).then(|| a.remove(0)));
        if answer.is_none() {
            self.unopened.store(true, Ordering::SeqCst);
        }
        answer
    }
}

impl Dialogs for FakeDialogs {
    fn open_midi(&self) -> Option<PathBuf> {
        self.next()
    }

    fn save_midi(&self, _suggested: &str) -> Option<PathBuf> {
        self.next()
    }

    fn save_wav(&self, _suggested: &str) -> Option<PathBuf> {
        self.next()
    }

    fn pick_folder(&self, _title: &str) -> Option<PathBuf> {
        self.next()
    }

    fn open_soundfont(&self) -> Option<PathBuf> {
        self.next()
    }

    fn take_unopened(&self) -> bool {
        self.unopened.swap(false, Ordering::SeqCst)
    }
}

/// `Piece.mid` from a name, safe as a file name.
pub fn suggested_file_name(name: &str, extension: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || " -_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stem = Path::new(clean.trim())
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "piece".into());
    format!("{stem}.{extension}")
}
