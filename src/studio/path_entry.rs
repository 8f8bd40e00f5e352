//! A typed path where the system file dialog cannot open (no xdg-desktop-portal, as on a bare X
//! server or some tiling window managers): rfd then returns at once with nothing, which looks
//! exactly like a cancel, so the studio times the call and offers this instead. A typed file to
//! save or export to that exists already is replaced only once the user confirms it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui::{Id, Modal, Ui};

/// A dialog that answered nothing faster than this did not really open (a person cannot cancel
/// a file dialog in a tenth of a second).
pub const TOO_FAST_TO_BE_A_CANCEL: Duration = Duration::from_millis(100);

/// What the typed path is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathPurpose {
    OpenMidi,
    SaveMidi,
    ExportWav,
}

impl PathPurpose {
    fn verb(self) -> &'static str {
        match self {
            PathPurpose::OpenMidi => "Open MIDI file",
            PathPurpose::SaveMidi => "Save MIDI file as",
            PathPurpose::ExportWav => "Export WAV file as",
        }
    }

    /// Whether the path is written to (an existing file is then replaced only when confirmed).
    fn writes(self) -> bool {
        self != PathPurpose::OpenMidi
    }
}

pub struct PathEntry {
    pub purpose: PathPurpose,
    pub text: String,
    /// The field takes the keyboard once, when the window opens.
    pub focused: bool,
    /// A typed file that exists, waiting for the user to confirm that it is to be replaced.
    pub replacing: Option<PathBuf>,
}

impl PathEntry {
    pub fn new(purpose: PathPurpose) -> Self {
        PathEntry {
            purpose,
            text: String::new(),
            focused: false,
            replacing: None,
        }
    }
}

/// Runs a dialog, and says whether it answered nothing too fast to have been shown.
pub fn timed<T>(dialog: impl FnOnce() -> Option<T>) -> (Option<T>, bool) {
    let started = Instant::now();
    let answer = dialog();
    let failed = answer.is_none() && started.elapsed() < TOO_FAST_TO_BE_A_CANCEL;
    (answer, failed)
}

/// The typed-path window: recent folders fill the field; Enter or OK answers.
pub fn ui(ui: &Ui, entry: &mut PathEntry, recent_folders: &[PathBuf]) -> Option<Option<PathBuf>> {
    let mut answer = None;
    let response = Modal::new(Id::unique("path-entry")).show(ui.ctx(), |ui| {
        ui.set_max_width(520.0);
        ui.heading(entry.purpose.verb());
        if let Some(existing) = entry.replacing.clone() {
            ui.label(format!(
                "{} already exists. Replace it?",
                existing.display()
            ));
            ui.horizontal(|ui| {
                if ui.button("Replace").clicked() {
                    answer = Some(Some(existing));
                }
                if ui.button("Back").clicked() {
                    entry.replacing = None;
                }
            });
            return;
        }
        ui.label("The system file dialog could not open here: type a path.");
        let field = ui.add(
            egui::TextEdit::singleline(&mut entry.text)
                .desired_width(480.0)
                .hint_text("/home/me/music/piece.mid"),
        );
        if !entry.focused {
            field.request_focus();
            entry.focused = true;
        }
        if !recent_folders.is_empty() {
            ui.horizontal_wrapped(|ui| {
                ui.label("Recent folders:");
                for folder in recent_folders {
                    if ui.small_button(folder.display().to_string()).clicked() {
                        entry.text = format!("{}/", folder.display());
                    }
                }
            });
        }
        let entered = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        ui.horizontal(|ui| {
            let typed = !entry.text.trim().is_empty();
            if (ui.add_enabled(typed, egui::Button::new("OK")).clicked() || entered) && typed {
                let path = PathBuf::from(entry.text.trim());
                if entry.purpose.writes() && path.is_file() {
                    entry.replacing = Some(path);
                } else {
                    answer = Some(Some(path));
                }
            }
            if ui.button("Cancel").clicked() {
                answer = Some(None);
            }
        });
    });
    if response.should_close() && answer.is_none() {
        answer = Some(None);
    }
    answer
}
