//! The Generate tab's "Export for a DAW" section: tempo, quantisation grid and track name, then
//! "Export take…" (the current take) or "Export all takes…" (one file per take into a folder).

use std::path::{Path, PathBuf};

use egui::Ui;

use super::dialogs::Dialogs;
use super::generate_panel::{GenerateEvent, TakeEntry};
use crate::midi::{ExportOptions, Grid, MAX_BPM, MIN_BPM, export_midi};

/// The section's widgets; returns what happened for the status bar.
pub fn export_ui(
    ui: &mut Ui,
    options: &mut ExportOptions,
    takes: &[TakeEntry],
    current: Option<usize>,
    dialogs: &dyn Dialogs,
) -> Vec<GenerateEvent> {
    let mut events = Vec::new();
    egui::CollapsingHeader::new("Export for a DAW")
        .id_salt("export")
        .default_open(false)
        .show(ui, |ui| {
            ui.add(
                egui::DragValue::new(&mut options.bpm)
                    .range(MIN_BPM..=MAX_BPM)
                    .speed(0.5)
                    .prefix("tempo ")
                    .suffix(" BPM"),
            );
            egui::ComboBox::from_label("quantise")
                .selected_text(options.quantize.map_or("off".into(), |g| g.name()))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut options.quantize, None, "off");
                    for g in Grid::all() {
                        ui.selectable_value(&mut options.quantize, Some(g), g.name());
                    }
                });
            ui.horizontal(|ui| {
                let label = ui.label("track name").id;
                ui.text_edit_singleline(&mut options.track_name)
                    .labelled_by(label);
            });
            ui.horizontal(|ui| {
                let take = current.and_then(|i| takes.get(i));
                if ui
                    .add_enabled(take.is_some(), egui::Button::new("Export take…"))
                    .clicked()
                    && let Some(entry) = take
                    && let Some(path) = dialogs.save_midi(&file_name(entry))
                {
                    events.push(match export_midi(&entry.take.performance, &path, options) {
                        Ok(()) => GenerateEvent::Message(format!("exported {}", path.display())),
                        Err(e) => GenerateEvent::Error(e.to_string()),
                    });
                }
                if ui
                    .add_enabled(!takes.is_empty(), egui::Button::new("Export all takes…"))
                    .clicked()
                    && let Some(folder) = dialogs.pick_folder("Export every take into a folder")
                {
                    events.push(match export_all(takes, &folder, options) {
                        Ok(paths) => GenerateEvent::Message(format!(
                            "exported {} take(s) to {}",
                            paths.len(),
                            folder.display()
                        )),
                        Err(e) => GenerateEvent::Error(e),
                    });
                }
            });
        });
    events
}

/// "take-003-seed-123456.mid".
fn file_name(entry: &TakeEntry) -> String {
    let number: String = entry.name.chars().filter(char::is_ascii_digit).collect();
    let number: usize = number.parse().unwrap_or(0);
    format!("take-{number:03}-seed-{}.mid", entry.seed)
}

/// Writes one file per take into `folder`; stops at the first failure and says which.
pub fn export_all(
    takes: &[TakeEntry],
    folder: &Path,
    options: &ExportOptions,
) -> Result<Vec<PathBuf>, String> {
    options.validate()?;
    let mut written = Vec::with_capacity(takes.len());
    for (i, entry) in takes.iter().enumerate() {
        let mut path = folder.join(file_name(entry));
        if written.contains(&path) {
            path = folder.join(format!("take-{:03}-{}.mid", i + 1, entry.seed));
        }
        let mut options = options.clone();
        if options.track_name.is_empty() {
            options.track_name = entry.name.clone();
        }
        export_midi(&entry.take.performance, &path, &options).map_err(|e| e.to_string())?;
        written.push(path);
    }
    Ok(written)
}
