//! The Library tab: the demo corpus and any opened folder as a searchable list; double-click opens
//! a piece on the roll.

use std::path::{Path, PathBuf};

use egui::Ui;

use super::dialogs::Dialogs;
use crate::corpus::{relative_key, scan_midi_files};

#[derive(Default)]
pub struct LibraryPanel {
    folders: Vec<(PathBuf, Vec<PathBuf>)>,
    search: String,
    error: Option<String>,
}

impl LibraryPanel {
    pub fn new(folders: &[PathBuf]) -> Self {
        let mut panel = LibraryPanel::default();
        for f in folders {
            panel.add_folder(f);
        }
        panel
    }

    pub fn add_folder(&mut self, folder: &Path) {
        if self.folders.iter().any(|(f, _)| f == folder) {
            return;
        }
        match scan_midi_files(folder) {
            Ok(files) => self.folders.push((folder.to_path_buf(), files)),
            Err(e) => self.error = Some(format!("{}: {e}", folder.display())),
        }
    }

    pub fn folders(&self) -> Vec<PathBuf> {
        self.folders.iter().map(|(f, _)| f.clone()).collect()
    }

    /// Returns a file to open when one is double-clicked.
    pub fn ui(&mut self, ui: &mut Ui, dialogs: &dyn Dialogs) -> Option<PathBuf> {
        let mut open = None;
        ui.horizontal(|ui| {
            ui.add(
                egui::TextEdit::singleline(&mut self.search)
                    .hint_text("search")
                    .desired_width(150.0),
            );
            if ui.button("Add folder…").clicked()
                && let Some(dir) = dialogs.pick_folder("Add a folder of MIDI files")
            {
                self.add_folder(&dir);
            }
        });
        if let Some(e) = &self.error {
            ui.colored_label(ui.visuals().error_fg_color, e);
        }
        let needle = self.search.to_lowercase();
        egui::ScrollArea::vertical()
            .id_salt("library")
            .show(ui, |ui| {
                for (folder, files) in &self.folders {
                    let title = folder.file_name().map_or_else(
                        || folder.display().to_string(),
                        |n| n.to_string_lossy().into_owned(),
                    );
                    egui::CollapsingHeader::new(format!("{title} ({} files)", files.len()))
                        .default_open(self.folders.len() == 1 || !needle.is_empty())
                        .show(ui, |ui| {
                            for file in files {
                                let name = relative_key(folder, file);
                                if !needle.is_empty() && !name.to_lowercase().contains(&needle) {
                                    continue;
                                }
                                let r = ui
                                    .selectable_label(false, &name)
                                    .on_hover_text("double-click (or Enter) to open");
                                // A single pointer click only selects; Enter on a focused entry
                                // and a screen reader's "activate" are not pointer clicks.
                                let activated =
                                    r.clicked() && !r.clicked_by(egui::PointerButton::Primary);
                                if r.double_clicked() || activated {
                                    open = Some(file.clone());
                                }
                            }
                        });
                }
            });
        open
    }
}
