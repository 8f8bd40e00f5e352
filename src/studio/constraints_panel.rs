//! The Generate tab's "Constraints" section (folded by default): the same controls as the CLI's
//! `--key`, `--key-strength`, `--range`, `--density`, `--velocity`, `--max-polyphony` and
//! `--max-note-seconds`, kept as widget state and turned into the engine's [`Constraints`].

use egui::Ui;
use serde::{Deserialize, Serialize};

use crate::generate::Constraints;
use crate::generate::constraints::DEFAULT_MAX_NOTE_SECONDS;
use crate::generate::music_terms::{MODES, Scale, note_name};

const TONICS: [&str; 12] = [
    "C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B",
];

/// What the section's widgets hold; each control has an on/off box so its value is remembered
/// while it is off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConstraintSettings {
    pub key_on: bool,
    pub tonic: u8,
    pub mode: u8,
    /// Soft lock: out-of-scale notes lose `key_strength` nats instead of being forbidden.
    pub key_soft: bool,
    pub key_strength: f64,
    pub range_on: bool,
    pub low: u8,
    pub high: u8,
    pub density_on: bool,
    pub density: f64,
    pub velocity_on: bool,
    pub velocity_low: u8,
    pub velocity_high: u8,
    pub polyphony_on: bool,
    pub max_polyphony: usize,
    pub note_length_on: bool,
    pub max_note_seconds: f64,
}

impl Default for ConstraintSettings {
    fn default() -> Self {
        ConstraintSettings {
            key_on: false,
            tonic: 0,
            mode: 0,
            key_soft: false,
            key_strength: 3.0,
            range_on: false,
            low: 36,
            high: 84,
            density_on: false,
            density: 6.0,
            velocity_on: false,
            velocity_low: 40,
            velocity_high: 96,
            polyphony_on: false,
            max_polyphony: 6,
            note_length_on: true,
            max_note_seconds: DEFAULT_MAX_NOTE_SECONDS,
        }
    }
}

impl ConstraintSettings {
    pub fn to_constraints(&self) -> Constraints {
        Constraints {
            key: self.key_on.then_some(Scale {
                tonic: self.tonic.min(11),
                mode: self.mode.min(MODES.len() as u8 - 1),
            }),
            key_strength: (self.key_on && self.key_soft).then_some(self.key_strength),
            range: self
                .range_on
                .then_some((self.low.min(self.high), self.high.max(self.low))),
            density: self.density_on.then_some(self.density),
            velocity: self.velocity_on.then_some((
                self.velocity_low.min(self.velocity_high),
                self.velocity_high.max(self.velocity_low),
            )),
            max_polyphony: self.polyphony_on.then_some(self.max_polyphony),
            max_note_seconds: self.note_length_on.then_some(self.max_note_seconds),
        }
    }

    /// The folded section; its header says how many controls are on.
    pub fn ui(&mut self, ui: &mut Ui) {
        let on = [
            self.key_on,
            self.range_on,
            self.density_on,
            self.velocity_on,
            self.polyphony_on,
        ]
        .iter()
        .filter(|&&b| b)
        .count();
        let title = if on == 0 {
            "Constraints".to_string()
        } else {
            format!("Constraints ({on} on)")
        };
        egui::CollapsingHeader::new(title)
            .id_salt("constraints")
            .default_open(false)
            .show(ui, |ui| self.controls(ui));
    }

    fn controls(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            let key = ui.checkbox(&mut self.key_on, "Key").id;
            ui.add_enabled_ui(self.key_on, |ui| {
                egui::ComboBox::from_id_salt("key-tonic")
                    .width(50.0)
                    .selected_text(TONICS[self.tonic.min(11) as usize])
                    .show_ui(ui, |ui| {
                        for (i, name) in TONICS.iter().enumerate() {
                            ui.selectable_value(&mut self.tonic, i as u8, *name);
                        }
                    })
                    .response
                    .labelled_by(key);
                egui::ComboBox::from_id_salt("key-mode")
                    .selected_text(MODES[(self.mode as usize).min(MODES.len() - 1)].0)
                    .show_ui(ui, |ui| {
                        for (i, (name, _)) in MODES.iter().enumerate() {
                            ui.selectable_value(&mut self.mode, i as u8, *name);
                        }
                    })
                    .response
                    .labelled_by(key);
            });
        });
        if self.key_on {
            ui.horizontal(|ui| {
                ui.checkbox(&mut self.key_soft, "Soft")
                    .on_hover_text("Notes outside the key become rarer instead of impossible");
                ui.add_enabled(
                    self.key_soft,
                    egui::Slider::new(&mut self.key_strength, 0.0..=10.0).text("strength"),
                );
            });
        }
        ui.horizontal(|ui| {
            let range = ui.checkbox(&mut self.range_on, "Range").id;
            ui.add_enabled_ui(self.range_on, |ui| {
                note_drag(ui, &mut self.low).labelled_by(range);
                ui.label("to");
                note_drag(ui, &mut self.high).labelled_by(range);
            });
        });
        ui.horizontal(|ui| {
            ui.checkbox(&mut self.density_on, "Density");
            ui.add_enabled(
                self.density_on,
                egui::Slider::new(&mut self.density, 0.5..=30.0).text("notes/s"),
            );
        });
        ui.horizontal(|ui| {
            let dynamics = ui.checkbox(&mut self.velocity_on, "Dynamics").id;
            ui.add_enabled_ui(self.velocity_on, |ui| {
                ui.add(egui::DragValue::new(&mut self.velocity_low).range(1..=124))
                    .labelled_by(dynamics);
                ui.label("to");
                ui.add(egui::DragValue::new(&mut self.velocity_high).range(4..=127))
                    .labelled_by(dynamics);
            });
        });
        ui.horizontal(|ui| {
            ui.checkbox(&mut self.polyphony_on, "Max polyphony");
            ui.add_enabled(
                self.polyphony_on,
                egui::Slider::new(&mut self.max_polyphony, 1..=16).text("notes"),
            );
        });
        ui.horizontal(|ui| {
            ui.checkbox(&mut self.note_length_on, "Longest note");
            ui.add_enabled(
                self.note_length_on,
                egui::Slider::new(&mut self.max_note_seconds, 0.5..=20.0).text("s"),
            );
        });
    }
}

/// A pitch as a drag value that shows its name ("C4").
fn note_drag(ui: &mut Ui, pitch: &mut u8) -> egui::Response {
    ui.add(
        egui::DragValue::new(pitch)
            .range(0..=127)
            .custom_formatter(|v, _| note_name(v.clamp(0.0, 127.0) as u8))
            .custom_parser(|t| {
                crate::generate::music_terms::parse_note(t)
                    .ok()
                    .map(f64::from)
            }),
    )
}
