//! The Generate tab's "Jam" section: call and response with the model. The loop itself is the
//! engine's [`crate::jam::Jam`]; this only picks the ports, starts and stops it, feeds it the
//! computer keyboard ("musical typing"), and hands its notes to the roll and its session to the
//! take list.

use std::path::PathBuf;
use std::sync::Arc;

use egui::Ui;

use super::jobs::Job;
use super::musical_typing::{Typed, TypingKeyboard};
use super::outputs::AudioOut;
use crate::device::DeviceChoice;
use crate::generate::GenerateConfig;
use crate::jam::{DEFAULT_ANSWER_SECONDS, DEFAULT_PAUSE_SECONDS, Jam, JamConfig, JamNote};
use crate::live_midi::{CLIENT_NAME, MidiIn, MidiOut, PortChoice};
use crate::model::MusicModel;
use crate::model::checkpoint::load_for_inference;
use crate::performance::Performance;

/// The output choice meaning "a virtual port named EchoAI Studio".
const VIRTUAL: &str = "";
/// The output choice meaning "the studio's current output" (the built-in synth by default).
const STUDIO_OUTPUT: &str = "\u{1}studio";

pub enum JamMsg {
    Started(Box<Jam>),
    Failed(String),
}

/// What the panel asks the app to do.
pub enum JamEvent {
    /// The session's notes so far, for the roll.
    Notes(Vec<JamNote>),
    /// The jam ended: the whole session, as a take.
    Take(Performance),
    Message(String),
    Error(String),
}

pub struct JamPanel {
    pub pause_seconds: f64,
    pub answer_seconds: f64,
    /// `None`: the computer keyboard; otherwise a MIDI input port's name.
    pub input_port: Option<String>,
    /// A MIDI output port's name, [`VIRTUAL`] or [`STUDIO_OUTPUT`] (the default).
    pub output_port: String,
    job: Option<Job<JamMsg>>,
    jam: Option<Jam>,
    connection: Option<Box<dyn Send>>,
    keyboard: TypingKeyboard,
    /// Letter keys held, with the pitch each started (the octave may change while held).
    held: Vec<(egui::Key, u8)>,
    shown: usize,
}

impl Default for JamPanel {
    fn default() -> Self {
        JamPanel {
            pause_seconds: DEFAULT_PAUSE_SECONDS,
            answer_seconds: DEFAULT_ANSWER_SECONDS,
            input_port: None,
            output_port: STUDIO_OUTPUT.into(),
            job: None,
            jam: None,
            connection: None,
            keyboard: TypingKeyboard::default(),
            held: Vec::new(),
            shown: 0,
        }
    }
}

impl JamPanel {
    pub fn is_jamming(&self) -> bool {
        self.jam.is_some() || self.job.is_some()
    }

    /// The folded section. `model` is the generate panel's cached model, if it is the checkpoint's.
    pub fn ui(
        &mut self,
        ui: &mut Ui,
        midi_in: &dyn MidiIn,
        midi_out: &Arc<dyn MidiOut + Send + Sync>,
        output: &mut dyn AudioOut,
        checkpoint: Option<PathBuf>,
        sampling: &GenerateConfig,
    ) -> Vec<JamEvent> {
        let mut events = Vec::new();
        self.poll(midi_in, &mut events);
        egui::CollapsingHeader::new("Jam (call and response)")
            .id_salt("jam")
            .default_open(false)
            .show(ui, |ui| {
                let idle = !self.is_jamming();
                let studio_output = output.name();
                ui.add_enabled_ui(idle, |ui| {
                    self.settings_ui(ui, midi_in, midi_out, &studio_output)
                });
                ui.horizontal(|ui| {
                    if idle {
                        if ui.button("Start jam").clicked() {
                            let ports = (midi_out, &mut *output);
                            match self.start(ui.ctx().clone(), ports, checkpoint, sampling) {
                                Ok(()) => events.push(JamEvent::Message(
                                    "jam: play a phrase, then pause".into(),
                                )),
                                Err(e) => events.push(JamEvent::Error(e)),
                            }
                        }
                    } else if ui.button("Stop jam").clicked() {
                        self.stop(&mut events);
                    }
                    if let Some(jam) = &self.jam {
                        let state = jam.state();
                        ui.label(if state.answering {
                            "answering…"
                        } else {
                            "listening"
                        });
                        if let Some(l) = state.latencies.last() {
                            ui.label(format!("{:.0} ms", l.as_secs_f64() * 1e3))
                                .on_hover_text("From the pause's end to the answer's first note");
                        }
                    }
                });
                if self.input_port.is_none() {
                    ui.label(format!(
                        "Keys: A W S E D F T G Y H U J K = C to C · Z X octave ({}) · C V velocity ({})",
                        crate::generate::music_terms::note_name(self.keyboard.base),
                        self.keyboard.velocity
                    ));
                }
            });
        if self.jam.is_some() && self.input_port.is_none() {
            self.musical_typing(ui);
        }
        if let Some(jam) = &self.jam {
            let notes = jam.state().notes;
            if notes.len() != self.shown {
                self.shown = notes.len();
                events.push(JamEvent::Notes(notes));
            }
            // Answer notes arrive on their own: keep looking.
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(50));
        }
        events
    }

    fn settings_ui(
        &mut self,
        ui: &mut Ui,
        midi_in: &dyn MidiIn,
        midi_out: &Arc<dyn MidiOut + Send + Sync>,
        studio_output: &str,
    ) {
        ui.add(egui::Slider::new(&mut self.pause_seconds, 0.2..=3.0).text("pause (s)"));
        ui.add(egui::Slider::new(&mut self.answer_seconds, 1.0..=16.0).text("answer (s)"));
        let inputs = midi_in.ports().unwrap_or_default();
        egui::ComboBox::new("jam-input", "play on")
            .width(180.0)
            .truncate()
            .selected_text(
                self.input_port
                    .clone()
                    .unwrap_or_else(|| "Computer keyboard".into()),
            )
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut self.input_port, None, "Computer keyboard");
                for p in inputs {
                    ui.selectable_value(&mut self.input_port, Some(p.clone()), p);
                }
            });
        let outputs = midi_out.ports().unwrap_or_default();
        let virtual_name = format!("virtual port \"{CLIENT_NAME}\"");
        let studio_name = format!("studio output ({studio_output})");
        // Long names are cut, not wrapped: wrapping squeezed the label to a letter a line.
        let chosen = egui::ComboBox::new("jam-output", "answer on")
            .width(180.0)
            .truncate()
            .selected_text(match self.output_port.as_str() {
                VIRTUAL => virtual_name.clone(),
                STUDIO_OUTPUT => "studio output".into(),
                port => port.to_string(),
            })
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut self.output_port, STUDIO_OUTPUT.into(), studio_name);
                ui.selectable_value(&mut self.output_port, VIRTUAL.into(), virtual_name);
                for p in outputs {
                    ui.selectable_value(&mut self.output_port, p.clone(), p);
                }
            });
        if self.output_port == STUDIO_OUTPUT {
            chosen
                .response
                .on_hover_text(format!("The studio's current output: {studio_output}"));
        }
    }

    fn start(
        &mut self,
        ctx: egui::Context,
        (midi_out, output): (&Arc<dyn MidiOut + Send + Sync>, &mut dyn AudioOut),
        checkpoint: Option<PathBuf>,
        sampling: &GenerateConfig,
    ) -> Result<(), String> {
        let path = checkpoint.ok_or("choose a checkpoint to jam with")?;
        let config = JamConfig {
            pause_seconds: self.pause_seconds,
            answer_seconds: self.answer_seconds,
            sampling: sampling.clone(),
            echo_player: self.input_port.is_none(),
        };
        config.validate()?;
        // Connect on the UI thread: it is quick, and a missing MIDI system or sound card is said
        // at once.
        let sender = match self.output_port.as_str() {
            STUDIO_OUTPUT => output.live_notes(),
            VIRTUAL => midi_out
                .connect(&PortChoice::Virtual(CLIENT_NAME.into()))
                .map_err(|e| e.to_string()),
            port => midi_out
                .connect(&PortChoice::Name(port.into()))
                .map_err(|e| e.to_string()),
        }
        .map_err(|e| format!("jam: {e}"))?;
        self.shown = 0;
        self.job = Some(Job::spawn(Some(ctx), "jam-start", move |tx, _| {
            let model: Result<MusicModel, String> = DeviceChoice::Cpu
                .open()
                .and_then(|d| load_for_inference(&path, &d).map_err(|e| e.to_string()))
                .map(|(m, _)| m);
            tx.send(
                match model.and_then(|m| Jam::start(Arc::new(m), sender, config)) {
                    Ok(jam) => JamMsg::Started(Box::new(jam)),
                    Err(e) => JamMsg::Failed(e),
                },
            );
        }));
        Ok(())
    }

    fn poll(&mut self, midi_in: &dyn MidiIn, events: &mut Vec<JamEvent>) {
        let Some(job) = &mut self.job else { return };
        for message in job.poll() {
            match message {
                JamMsg::Started(jam) => {
                    if let Some(port) = &self.input_port {
                        match midi_in.listen(&PortChoice::Name(port.clone()), jam.midi_callback()) {
                            Ok(conn) => self.connection = Some(conn),
                            Err(e) => events.push(JamEvent::Error(format!("jam input: {e}"))),
                        }
                    }
                    self.jam = Some(*jam);
                }
                JamMsg::Failed(e) => events.push(JamEvent::Error(format!("jam: {e}"))),
            }
        }
        if job.is_finished() {
            self.job = None;
        }
    }

    fn stop(&mut self, events: &mut Vec<JamEvent>) {
        self.connection = None;
        self.held.clear();
        if let Some(jam) = self.jam.take() {
            let state = jam.stop();
            if let Some(e) = state.error {
                events.push(JamEvent::Error(format!("jam: {e}")));
            }
            let take = Performance::from_notes(state.notes.iter().map(|n| n.note).collect());
            if !take.is_empty() {
                events.push(JamEvent::Notes(state.notes));
                events.push(JamEvent::Take(take));
            }
        }
        self.job = None;
    }

    /// Letter keys to notes while the jam listens to the computer keyboard.
    fn musical_typing(&mut self, ui: &Ui) {
        let Some(jam) = &self.jam else { return };
        if ui.ctx().egui_wants_keyboard_input() {
            return;
        }
        let keys: Vec<(egui::Key, bool, bool)> = ui.input(|i| {
            i.events
                .iter()
                .filter_map(|e| match e {
                    egui::Event::Key {
                        key,
                        pressed,
                        repeat,
                        modifiers,
                        ..
                    } if modifiers.is_none() => Some((*key, *pressed, *repeat)),
                    _ => None,
                })
                .collect()
        });
        for (key, pressed, repeat) in keys {
            if repeat {
                continue;
            }
            if pressed {
                if let Some(Typed::Note(pitch)) = self.keyboard.press(key) {
                    jam.note_on(pitch, self.keyboard.velocity);
                    self.held.push((key, pitch));
                }
            } else if let Some(i) = self.held.iter().position(|(k, _)| *k == key) {
                let (_, pitch) = self.held.remove(i);
                jam.note_off(pitch);
            }
        }
    }
}
