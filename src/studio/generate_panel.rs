//! The Generate tab: checkpoint picker, primer, sampling settings, Generate / Cancel, and the take
//! list. Generation runs as a job; notes stream onto the roll as they come.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use egui::Ui;
use serde::{Deserialize, Serialize};

use super::constraints_panel::ConstraintSettings;
use super::dialogs::Dialogs;
use super::extend::{Extend, kept_part};
use super::jobs::Job;
use crate::device::DeviceChoice;
use crate::generate::{GenerateConfig, Take, generate, splice};
use crate::live_midi::{MidiIn, MidiRecorder, PortChoice};
use crate::model::MusicModel;
use crate::model::WeightPrecision;
use crate::model::checkpoint::{self, load_for_inference};
use crate::performance::{Note, Performance};
use crate::stats::{PieceStats, compare};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrimerKind {
    None,
    Selection,
    FirstSeconds,
    File,
    Recorded,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerateSettings {
    pub checkpoint: Option<PathBuf>,
    pub recent_checkpoints: Vec<PathBuf>,
    pub primer: PrimerKind,
    pub primer_seconds: f64,
    pub primer_file: Option<PathBuf>,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub seconds: f64,
    pub seed: u64,
    pub variations: usize,
    /// Whether the model may end a piece before the requested length.
    pub may_end_early: bool,
    /// Keep `seed` for the next press of Generate; otherwise each press draws a fresh one.
    #[serde(default)]
    pub lock_seed: bool,
    #[serde(default)]
    pub constraints: ConstraintSettings,
    /// Tempo, grid and track name for "Export take…" and "Export all takes…".
    #[serde(default)]
    pub export: crate::midi::ExportOptions,
}

impl Default for GenerateSettings {
    fn default() -> Self {
        GenerateSettings {
            checkpoint: None,
            recent_checkpoints: Vec::new(),
            primer: PrimerKind::None,
            primer_seconds: 8.0,
            primer_file: None,
            temperature: 1.0,
            top_p: 0.95,
            top_k: 0,
            seconds: 30.0,
            seed: 1,
            variations: 1,
            may_end_early: false,
            lock_seed: false,
            constraints: ConstraintSettings::default(),
            export: crate::midi::ExportOptions::default(),
        }
    }
}

/// One result in the take list.
#[derive(Clone, Debug)]
pub struct TakeEntry {
    pub name: String,
    pub model: String,
    pub settings: String,
    pub seed: u64,
    pub take: Take,
}

/// Which checkpoint a cached model came from, and which version of its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelKey {
    path: PathBuf,
    stamp: Option<checkpoint::WeightsStamp>,
}

pub enum GenMsg {
    Model(ModelKey, Arc<MusicModel>),
    Note(usize, Note),
    Done(Vec<Take>),
    Failed(String),
}

/// What the panel asks the app to do.
pub enum GenerateEvent {
    /// Show this take on the roll.
    ShowTake(usize),
    /// A note of the first variation, while generating.
    LiveNote(Note),
    /// Generation started: clear the roll for the new take (the primer stays).
    Started(Performance),
    Message(String),
    Error(String),
}

/// What the panel reads from the rest of the studio when Generate is pressed.
pub struct PrimerContext {
    pub selection: Performance,
    pub piece: Performance,
    /// Where "Regenerate from here" cuts when nothing is selected.
    pub playhead: f64,
}

/// A recording in progress: the notes so far and the open input connection.
type Recording = (Arc<Mutex<MidiRecorder>>, Box<dyn Send>);

#[derive(Default)]
pub struct GeneratePanel {
    pub settings: GenerateSettings,
    pub takes: Vec<TakeEntry>,
    pub current_take: Option<usize>,
    job: Option<Job<GenMsg>>,
    job_seconds: f64,
    progress_seconds: f64,
    /// The last model loaded, keyed by its folder and the version of its weights, so a
    /// checkpoint that training has since rewritten is loaded afresh.
    model_cache: Option<(ModelKey, Arc<MusicModel>)>,
    recording: Option<Recording>,
    recorded: Option<Performance>,
    input_port: String,
    pending_generate: bool,
    /// The seed and the constraints the running job was started with (the settings may change
    /// while it runs).
    job_seed: u64,
    job_constraints: String,
    /// "Regenerate from here" or "Continue" asked for with the pending generation.
    pending_extend: Option<Extend>,
    /// The kept notes of a running "Regenerate from here" / "Continue", spliced back exactly.
    job_kept: Option<Performance>,
    /// Statistics of the demo corpus, computed once in the background for the take comparison.
    reference: Option<Arc<Vec<PieceStats>>>,
    reference_job: Option<Job<Vec<PieceStats>>>,
}

/// The bundled checkpoints, attention model first.
pub fn bundled_checkpoints() -> Vec<PathBuf> {
    let root = crate::assets::assets_dir().join("models");
    ["lstm-attention", "lstm"]
        .iter()
        .map(|k| root.join(k))
        .filter(|p| checkpoint::is_checkpoint(p))
        .collect()
}

/// "attn (lstm-attention, step 2400)", read from the checkpoint's config once and remembered, so
/// drawing the picker every frame touches no file.
fn describe_checkpoint(path: &Path) -> String {
    let cache = descriptions();
    if let Some(known) = cache.lock().ok().and_then(|c| c.get(path).cloned()) {
        return known;
    }
    let text = read_checkpoint_description(path);
    if let Ok(mut c) = cache.lock() {
        c.insert(path.to_path_buf(), text.clone());
    }
    text
}

fn descriptions() -> &'static Mutex<std::collections::HashMap<PathBuf, String>> {
    static CACHE: std::sync::OnceLock<Mutex<std::collections::HashMap<PathBuf, String>>> =
        std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn read_checkpoint_description(path: &Path) -> String {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match checkpoint::read_meta(path) {
        Ok(meta) => format!("{name} ({}, step {})", meta.model.kind, meta.step),
        Err(_) => format!("{name} (unreadable)"),
    }
}

impl GeneratePanel {
    pub fn new(settings: GenerateSettings) -> Self {
        let mut panel = GeneratePanel {
            settings,
            ..Default::default()
        };
        if panel.settings.checkpoint.is_none() {
            panel.settings.checkpoint = bundled_checkpoints().into_iter().next();
        }
        panel
    }

    pub fn is_generating(&self) -> bool {
        self.job.is_some()
    }

    /// Adds a checkpoint (a finished training run) to the picker and selects it.
    pub fn add_checkpoint(&mut self, path: PathBuf) {
        // A run that wrote this folder again has a new step: describe it afresh.
        if let Ok(mut c) = descriptions().lock() {
            c.remove(&path);
        }
        self.settings.recent_checkpoints.retain(|p| p != &path);
        self.settings.recent_checkpoints.insert(0, path.clone());
        self.settings.recent_checkpoints.truncate(10);
        self.settings.checkpoint = Some(path);
    }

    /// Every checkpoint the picker offers: the bundled ones, then recent ones.
    pub fn checkpoints(&self) -> Vec<PathBuf> {
        checkpoint_choices(&self.settings.recent_checkpoints)
    }

    /// Asks for a generation on the next frame (Ctrl+G, the button).
    pub fn request_generate(&mut self) {
        self.pending_generate = true;
    }

    pub fn cancel(&mut self) {
        if let Some(job) = &self.job {
            job.cancel();
        }
    }

    pub fn ui(
        &mut self,
        ui: &mut Ui,
        dialogs: &dyn Dialogs,
        midi_in: &dyn MidiIn,
        context: &PrimerContext,
    ) -> Vec<GenerateEvent> {
        let mut events = Vec::new();
        let s = &mut self.settings;
        let model_heading = ui.heading("Model");
        let current = s.checkpoint.clone();
        egui::ComboBox::from_id_salt("checkpoint")
            .width(ui.available_width() - 10.0)
            .selected_text(
                current
                    .as_deref()
                    .map_or("Choose a checkpoint".into(), describe_checkpoint),
            )
            .show_ui(ui, |ui| {
                for path in checkpoint_choices(&s.recent_checkpoints) {
                    let label = describe_checkpoint(&path);
                    ui.selectable_value(&mut s.checkpoint, Some(path), label);
                }
            })
            .response
            .labelled_by(model_heading.id);
        if ui.button("Open checkpoint folder…").clicked()
            && let Some(path) = dialogs.pick_folder("Choose a checkpoint folder")
        {
            if checkpoint::is_checkpoint(&path) {
                self.add_checkpoint(path);
            } else {
                events.push(GenerateEvent::Error(format!(
                    "{} is not a checkpoint (no config.json)",
                    path.display()
                )));
            }
        }
        let s = &mut self.settings;

        ui.separator();
        let primer_heading = ui.heading("Primer");
        egui::ComboBox::from_id_salt("primer")
            .selected_text(match s.primer {
                PrimerKind::None => "None (start from silence)",
                PrimerKind::Selection => "The selected notes",
                PrimerKind::FirstSeconds => "The first seconds of the piece",
                PrimerKind::File => "A MIDI file",
                PrimerKind::Recorded => "Recorded from a MIDI keyboard",
            })
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut s.primer, PrimerKind::None, "None (start from silence)");
                ui.selectable_value(&mut s.primer, PrimerKind::Selection, "The selected notes");
                ui.selectable_value(
                    &mut s.primer,
                    PrimerKind::FirstSeconds,
                    "The first seconds of the piece",
                );
                ui.selectable_value(&mut s.primer, PrimerKind::File, "A MIDI file");
                ui.selectable_value(
                    &mut s.primer,
                    PrimerKind::Recorded,
                    "Recorded from a MIDI keyboard",
                );
            })
            .response
            .labelled_by(primer_heading.id);
        match s.primer {
            PrimerKind::FirstSeconds | PrimerKind::File => {
                ui.add(egui::Slider::new(&mut s.primer_seconds, 1.0..=60.0).text("primer seconds"));
            }
            _ => {}
        }
        if s.primer == PrimerKind::File {
            ui.horizontal(|ui| {
                let name = s
                    .primer_file
                    .as_deref()
                    .and_then(|p| p.file_name())
                    .map_or("no file".into(), |n| n.to_string_lossy().into_owned());
                ui.label(name);
                if ui.button("Choose…").clicked()
                    && let Some(p) = dialogs.open_midi()
                {
                    s.primer_file = Some(p);
                }
            });
        }
        if s.primer == PrimerKind::Recorded {
            self.recording_ui(ui, midi_in, &mut events);
        }
        let s = &mut self.settings;

        ui.separator();
        ui.heading("Sampling");
        ui.add(egui::Slider::new(&mut s.temperature, 0.1..=2.0).text("temperature"));
        ui.add(egui::Slider::new(&mut s.top_p, 0.1..=1.0).text("top-p"));
        ui.add(egui::Slider::new(&mut s.top_k, 0..=100).text("top-k (0 = off)"));
        ui.add(
            egui::Slider::new(&mut s.seconds, 2.0..=300.0)
                .logarithmic(true)
                .text("length (s)"),
        );
        ui.horizontal(|ui| {
            ui.add(egui::DragValue::new(&mut s.seed).prefix("seed "));
            ui.checkbox(&mut s.lock_seed, "Lock seed").on_hover_text(
                "Keep this seed to repeat a take; unlocked, every Generate draws a new one",
            );
            if ui.button("Random").on_hover_text("A random seed").clicked() {
                s.seed = fresh_seed();
            }
        });
        ui.add(egui::Slider::new(&mut s.variations, 1..=8).text("variations"));
        ui.checkbox(&mut s.may_end_early, "Let the model end the piece early");
        s.constraints.ui(ui);

        ui.horizontal(|ui| {
            let generating = self.job.is_some();
            if ui
                .add_enabled(!generating, egui::Button::new("Generate  (Ctrl+G)"))
                .clicked()
            {
                self.pending_generate = true;
            }
            if ui
                .add_enabled(generating, egui::Button::new("Cancel"))
                .clicked()
            {
                self.cancel();
            }
        });
        ui.horizontal(|ui| {
            let generating = self.job.is_some();
            let from_here = ui
                .add_enabled(!generating, egui::Button::new("Regenerate from here"))
                .on_hover_text(
                    "Keep every note before the playhead (or the selection's start) and sample the rest",
                );
            let more = ui
                .add_enabled(!generating, egui::Button::new("Continue"))
                .on_hover_text("Keep the whole piece and add to its end");
            for (response, mode) in [(from_here, Extend::FromHere), (more, Extend::Continue)] {
                if response.clicked() {
                    self.pending_extend = Some(mode);
                    self.pending_generate = true;
                }
            }
        });
        if self.job.is_some() {
            let fraction =
                (self.progress_seconds / self.job_seconds.max(1e-9)).clamp(0.0, 1.0) as f32;
            ui.add(egui::ProgressBar::new(fraction).text(format!(
                "{:.0} / {:.0} s",
                self.progress_seconds, self.job_seconds
            )));
        }
        let extend = self.pending_extend.take();
        if std::mem::take(&mut self.pending_generate) && self.job.is_none() {
            match self.start(ui.ctx().clone(), context, extend) {
                Ok(primer) => events.push(GenerateEvent::Started(primer)),
                Err(e) => events.push(GenerateEvent::Error(e)),
            }
        }

        ui.separator();
        ui.heading("Takes");
        if self.takes.is_empty() {
            ui.label("Generated pieces appear here.");
        }
        egui::ScrollArea::vertical()
            .id_salt("takes")
            .max_height(220.0)
            .show(ui, |ui| {
                for (i, t) in self.takes.iter().enumerate().rev() {
                    let selected = self.current_take == Some(i);
                    let r = ui
                        .selectable_label(
                            selected,
                            format!("{}  ·  seed {}  ·  {}", t.name, t.seed, t.model),
                        )
                        .on_hover_text(format!("{}\nseed {}", t.settings, t.seed));
                    if r.clicked() {
                        self.current_take = Some(i);
                        events.push(GenerateEvent::ShowTake(i));
                    }
                }
            });
        events.extend(super::export_panel::export_ui(
            ui,
            &mut self.settings.export,
            &self.takes,
            self.current_take,
            dialogs,
        ));
        self.comparison_ui(ui);
        events
    }

    /// How the current take's statistics sit against the demo corpus (Yang & Lerch overlap).
    fn comparison_ui(&mut self, ui: &mut Ui) {
        let Some(take) = self.current_take.and_then(|i| self.takes.get(i)) else {
            return;
        };
        let take_stats = PieceStats::of(&take.take.performance);
        egui::CollapsingHeader::new("Compare with the demo corpus").show(ui, |ui| {
            if let Some(job) = &mut self.reference_job {
                if let Some(stats) = job.poll().pop() {
                    self.reference = Some(Arc::new(stats));
                }
                if job.is_finished() {
                    self.reference_job = None;
                }
            }
            let Some(reference) = self.reference.clone() else {
                if self.reference_job.is_none() {
                    self.reference_job = Some(Job::spawn(
                        Some(ui.ctx().clone()),
                        "corpus-stats",
                        |tx, _| {
                            let stats =
                                crate::corpus::scan_midi_files(&crate::assets::demo_corpus_dir())
                                    .unwrap_or_default()
                                    .iter()
                                    .filter_map(|p| crate::midi::read_midi(p).ok())
                                    .map(|p| PieceStats::of(&p))
                                    .collect();
                            tx.send(stats);
                        },
                    ));
                }
                super::busy::busy_indicator(ui);
                return;
            };
            ui.label(
                "Overlap area: 1 means this take sits among the corpus pieces like one of them.",
            );
            egui::Grid::new("take-stats")
                .num_columns(3)
                .striped(true)
                .show(ui, |ui| {
                    for row in compare(std::slice::from_ref(&take_stats), &reference) {
                        ui.label(&row.name);
                        ui.label(format!("{:.2}", row.overlap));
                        if row.flagged {
                            ui.colored_label(ui.visuals().warn_fg_color, "outside the corpus");
                        } else {
                            ui.label("");
                        }
                        ui.end_row();
                    }
                });
        });
    }

    fn recording_ui(&mut self, ui: &mut Ui, midi_in: &dyn MidiIn, events: &mut Vec<GenerateEvent>) {
        let ports = midi_in.ports();
        match &ports {
            Err(e) => {
                ui.colored_label(ui.visuals().warn_fg_color, e.to_string());
            }
            Ok(names) if names.is_empty() => {
                ui.label("No MIDI input ports.");
            }
            Ok(names) => {
                egui::ComboBox::new("input-port", "input")
                    .selected_text(if self.input_port.is_empty() {
                        "Choose an input"
                    } else {
                        &self.input_port
                    })
                    .show_ui(ui, |ui| {
                        for n in names {
                            ui.selectable_value(&mut self.input_port, n.clone(), n);
                        }
                    });
            }
        }
        ui.horizontal(|ui| {
            if self.recording.is_none() {
                if ui
                    .add_enabled(!self.input_port.is_empty(), egui::Button::new("Record"))
                    .clicked()
                {
                    let recorder = Arc::new(Mutex::new(MidiRecorder::new()));
                    let sink = recorder.clone();
                    match midi_in.listen(
                        &PortChoice::Name(self.input_port.clone()),
                        Box::new(move |micros, bytes| {
                            if let Ok(mut r) = sink.lock() {
                                r.push(micros, bytes);
                            }
                        }),
                    ) {
                        Ok(conn) => self.recording = Some((recorder, conn)),
                        Err(e) => events.push(GenerateEvent::Error(e.to_string())),
                    }
                }
            } else if ui.button("Stop recording").clicked()
                && let Some((recorder, conn)) = self.recording.take()
            {
                drop(conn);
                let perf = recorder
                    .lock()
                    .map(|mut r| std::mem::take(&mut *r).finish())
                    .unwrap_or_default();
                events.push(GenerateEvent::Message(format!(
                    "recorded {} notes as the primer",
                    perf.len()
                )));
                self.recorded = Some(perf);
            }
            if let Some((recorder, _)) = &self.recording {
                let n = recorder.lock().map(|r| r.notes_so_far()).unwrap_or(0);
                ui.label(format!("recording… {n} notes"));
            } else if let Some(p) = &self.recorded {
                ui.label(format!("{} notes recorded", p.len()));
            }
        });
    }

    fn primer(&self, context: &PrimerContext) -> Result<Option<Performance>, String> {
        let s = &self.settings;
        Ok(match s.primer {
            PrimerKind::None => None,
            PrimerKind::Selection => {
                if context.selection.is_empty() {
                    return Err("select some notes on the roll to use them as the primer".into());
                }
                let start = context
                    .selection
                    .notes
                    .iter()
                    .map(|n| n.start)
                    .fold(f64::MAX, f64::min);
                Some(Performance::from_notes(
                    context
                        .selection
                        .notes
                        .iter()
                        .map(|n| Note {
                            start: n.start - start,
                            end: n.end - start,
                            ..*n
                        })
                        .collect(),
                ))
            }
            PrimerKind::FirstSeconds => Some(context.piece.first_seconds(s.primer_seconds)),
            PrimerKind::File => {
                let path = s
                    .primer_file
                    .as_deref()
                    .ok_or("choose a MIDI file for the primer")?;
                Some(
                    crate::midi::read_midi(path)
                        .map_err(|e| e.to_string())?
                        .first_seconds(s.primer_seconds),
                )
            }
            PrimerKind::Recorded => Some(self.recorded.clone().ok_or("record a primer first")?),
        })
    }

    fn start(
        &mut self,
        ctx: egui::Context,
        context: &PrimerContext,
        extend: Option<Extend>,
    ) -> Result<Performance, String> {
        let path = self
            .settings
            .checkpoint
            .clone()
            .ok_or("choose a checkpoint first (or train one in the Train tab)")?;
        let (primer, primer_length) = match extend {
            Some(mode) => {
                let (kept, cut) =
                    kept_part(mode, &context.piece, &context.selection, context.playhead);
                if kept.is_empty() {
                    (None, None)
                } else {
                    (Some(kept), Some(cut))
                }
            }
            None => (self.primer(context)?, None),
        };
        if !self.settings.lock_seed {
            // Every press is a new piece; the seed shown is the one this take is made with.
            self.settings.seed = fresh_seed();
        }
        let s = &self.settings;
        let config = GenerateConfig {
            max_seconds: s.seconds,
            min_seconds: if s.may_end_early { 0.0 } else { s.seconds },
            max_events: (s.seconds * 200.0).max(1000.0) as usize,
            variations: s.variations,
            // f32 already samples at ~100x real time here; bfloat16 is a CLI choice.
            precision: WeightPrecision::F32,
            primer_length,
            open_with_note: extend == Some(Extend::Continue),
            ..self.sampling_config()
        };
        config.validate()?;
        self.job_kept = primer.clone().filter(|_| primer_length.is_some());
        self.job_seed = config.seed;
        self.job_constraints = config.constraints.describe();
        let key = ModelKey {
            stamp: checkpoint::weights_stamp(&path),
            path: path.clone(),
        };
        let cached = self
            .model_cache
            .clone()
            .filter(|(k, _)| k == &key && key.stamp.is_some())
            .map(|(_, m)| m);
        self.job_seconds = s.seconds;
        self.progress_seconds = 0.0;
        let primer_for_job = primer.clone();
        self.job = Some(Job::spawn(Some(ctx), "generate", move |tx, cancel| {
            let model = match cached {
                Some(m) => m,
                None => match DeviceChoice::Cpu
                    .open()
                    .and_then(|d| load_for_inference(&path, &d).map_err(|e| e.to_string()))
                {
                    Ok((m, _)) => {
                        let m = Arc::new(m);
                        tx.send(GenMsg::Model(key, m.clone()));
                        m
                    }
                    Err(e) => {
                        tx.send(GenMsg::Failed(e));
                        return;
                    }
                },
            };
            let mut on_event = |p: crate::generate::Progress| {
                if let Some(note) = p.note {
                    tx.send(GenMsg::Note(p.variation, note));
                }
            };
            match generate(
                &model,
                primer_for_job.as_ref(),
                &config,
                &cancel,
                &mut on_event,
            ) {
                Ok(takes) => tx.send(GenMsg::Done(takes)),
                Err(e) => tx.send(GenMsg::Failed(e.to_string())),
            };
        }));
        Ok(primer.unwrap_or_default())
    }

    /// Temperature, top-k, top-p, seed and constraints as set now (Generate and the jam's answers).
    pub fn sampling_config(&self) -> GenerateConfig {
        let s = &self.settings;
        GenerateConfig {
            temperature: s.temperature,
            top_k: (s.top_k > 0).then_some(s.top_k),
            top_p: (s.top_p < 1.0).then_some(s.top_p),
            seed: s.seed,
            constraints: s.constraints.to_constraints(),
            ..GenerateConfig::default()
        }
    }

    /// A jam session becomes a take, shown at once.
    pub fn add_jam_take(&mut self, performance: Performance) {
        let n = self.takes.len() + 1;
        self.takes.push(TakeEntry {
            name: format!("Take {n} (jam)"),
            model: self
                .settings
                .checkpoint
                .as_deref()
                .map_or("?".into(), describe_checkpoint),
            settings: "call and response".into(),
            seed: self.settings.seed,
            take: whole_take(performance),
        });
        self.current_take = Some(n - 1);
    }

    /// Adds a take kept by an earlier session (read back from `from`).
    pub fn add_restored_take(&mut self, from: String, performance: Performance) {
        let n = self.takes.len() + 1;
        self.takes.push(TakeEntry {
            name: format!("Take {n} (restored)"),
            model: "an earlier session".into(),
            settings: from,
            seed: 0,
            take: whole_take(performance),
        });
    }

    /// Collects the job's messages; call every frame.
    pub fn poll(&mut self) -> Vec<GenerateEvent> {
        let mut events = Vec::new();
        let Some(job) = &mut self.job else {
            return events;
        };
        for message in job.poll() {
            match message {
                GenMsg::Model(key, model) => self.model_cache = Some((key, model)),
                GenMsg::Note(variation, note) => {
                    if variation == 0 {
                        self.progress_seconds = self.progress_seconds.max(note.end);
                        events.push(GenerateEvent::LiveNote(note));
                    }
                }
                GenMsg::Done(takes) => {
                    let s = &self.settings;
                    let model = s
                        .checkpoint
                        .as_deref()
                        .map_or("?".into(), describe_checkpoint);
                    let first_new = self.takes.len();
                    for (v, mut take) in takes.into_iter().enumerate() {
                        if let Some(kept) = &self.job_kept {
                            // The earlier part exactly as it was, not as the model's grid has it.
                            take.performance = splice(kept, &take);
                        }
                        let n = self.takes.len() + 1;
                        self.takes.push(TakeEntry {
                            name: format!("Take {n}"),
                            model: model.clone(),
                            settings: format!(
                                "temperature {:.2}, top-p {:.2}, top-k {}, {:.0} s, variation {}{}{}",
                                s.temperature,
                                s.top_p,
                                s.top_k,
                                s.seconds,
                                v + 1,
                                if self.job_constraints.is_empty() { "" } else { "\n" },
                                self.job_constraints,
                            ),
                            seed: self.job_seed,
                            take,
                        });
                    }
                    self.current_take = Some(first_new);
                    events.push(GenerateEvent::ShowTake(first_new));
                    events.push(GenerateEvent::Message(format!(
                        "generated {} take(s)",
                        self.takes.len() - first_new
                    )));
                    self.job = None;
                    return events;
                }
                GenMsg::Failed(e) => {
                    let cancelled = e == "cancelled";
                    events.push(if cancelled {
                        GenerateEvent::Message("generation cancelled".into())
                    } else {
                        GenerateEvent::Error(format!("generation failed: {e}"))
                    });
                    self.job = None;
                    return events;
                }
            }
        }
        if job.is_finished() {
            if let Some(why) = job.failure() {
                events.push(GenerateEvent::Error(format!(
                    "generation stopped unexpectedly: {why}"
                )));
            }
            self.job = None;
        }
        events
    }
}

/// A seed no earlier press of this process drew: the clock's nanoseconds mixed with a counter
/// (splitmix64), kept below a million so it is easy to read off a take and type back.
pub fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static LAST: AtomicU64 = AtomicU64::new(u64::MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    loop {
        let mut z = nanos
            ^ COUNTER
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let seed = (z ^ (z >> 31)) % 1_000_000;
        if LAST.swap(seed, Ordering::Relaxed) != seed {
            return seed;
        }
    }
}

fn checkpoint_choices(recent: &[PathBuf]) -> Vec<PathBuf> {
    let mut all = bundled_checkpoints();
    for p in recent {
        if !all.contains(p) {
            all.push(p.clone());
        }
    }
    all
}

/// A take that is all new music (a jam session, a restored take): no primer.
fn whole_take(performance: Performance) -> Take {
    Take {
        events: crate::tokenizer::encode(&performance),
        generated: performance.clone(),
        performance,
        primer_seconds: 0.0,
        ended_by_model: false,
    }
}
