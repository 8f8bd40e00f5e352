//! Guarding unsaved work: closing the window or opening another file while the piece has edits
//! (or while this session's takes exist only in the session folder) asks Save / Discard / Cancel.

use std::path::PathBuf;

use egui::{Id, Modal, Ui};

/// What waits on the user's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum PendingAction {
    Close,
    Open(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Save,
    Discard,
    Cancel,
}

/// The question, with one line per thing that would be lost; `None` until a button is pressed.
pub fn ask(ui: &Ui, action: &PendingAction, unsaved: &[String]) -> Option<Choice> {
    let mut choice = None;
    let title = match action {
        PendingAction::Close => "Close EchoAI Studio?".to_string(),
        PendingAction::Open(path) => format!("Open {}?", path.display()),
    };
    let response = Modal::new(Id::unique("unsaved-work")).show(ui.ctx(), |ui| {
        ui.set_max_width(460.0);
        ui.heading(title);
        for line in unsaved {
            ui.label(format!("• {line}"));
        }
        ui.add_space(8.0);
        ui.horizontal(|ui| {
            if ui.button("Save piece…").clicked() {
                choice = Some(Choice::Save);
            }
            if ui.button("Discard").clicked() {
                choice = Some(Choice::Discard);
            }
            if ui.button("Cancel").clicked() {
                choice = Some(Choice::Cancel);
            }
        });
    });
    if response.should_close() && choice.is_none() {
        choice = Some(Choice::Cancel);
    }
    choice
}
