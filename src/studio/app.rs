//! EchoAI Studio: the window. A toolbar (files, transport, output, volume), a side panel with the
//! Generate, Train and Library tabs, the piano roll in the centre, and a status bar. The app
//! composes panels and talks to the engine only through jobs and messages.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use egui::{Key, KeyboardShortcut, Modifiers, Ui};
use serde::{Deserialize, Serialize};

use super::dialogs::{Dialogs, suggested_file_name};
use super::document::{Document, NoteOrigin};
use super::generate_panel::{GenerateEvent, GeneratePanel, GenerateSettings, PrimerContext};
use super::jam_panel::{JamEvent, JamPanel};
use super::jobs::Job;
use super::library_panel::LibraryPanel;
use super::outputs::{AudioOut, MidiPortOut, SynthOut};
use super::path_entry::{PathEntry, PathPurpose};
use super::piano_roll::{PianoRoll, RollAction};
use super::session::TakeStore;
use super::train_panel::{TrainPanel, TrainPanelEvent, TrainSettings};
use super::training_view::{TrainingView, ViewAction};
use super::unsaved::{Choice, PendingAction};
use crate::audio::{PianoSoundFont, render_performance, write_wav};
use crate::live_midi::{MidiIn, MidiOut, PortChoice};
use crate::midi::{read_midi_with_tempo, write_midi};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Tab {
    #[default]
    Generate,
    Train,
    Library,
}

/// What the central area shows while the Train tab is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Central {
    #[default]
    Roll,
    Training,
}

/// Everything that persists across restarts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct StudioSettings {
    pub generate: GenerateSettings,
    pub train: TrainSettings,
    pub roll: PianoRoll,
    pub tab: Tab,
    pub central: Central,
    pub recent_files: Vec<PathBuf>,
    pub library_folders: Vec<PathBuf>,
    pub volume: f32,
    pub soundfont: Option<PathBuf>,
}

impl Default for StudioSettings {
    fn default() -> Self {
        StudioSettings {
            generate: GenerateSettings::default(),
            train: TrainSettings::default(),
            roll: PianoRoll::default(),
            tab: Tab::Generate,
            central: Central::Roll,
            recent_files: Vec::new(),
            library_folders: Vec::new(),
            volume: 0.8,
            soundfont: None,
        }
    }
}

/// The machine-facing parts, replaced by fakes in tests.
pub struct StudioEnv {
    pub dialogs: Box<dyn Dialogs>,
    pub output: Box<dyn AudioOut>,
    pub midi_out: Arc<dyn MidiOut + Send + Sync>,
    pub midi_in: Box<dyn MidiIn>,
    /// Where each session keeps its takes as they are made ([`super::session::TakeStore`]).
    pub session_root: PathBuf,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub text: String,
    pub is_error: bool,
}

enum ExportMsg {
    Done(PathBuf, f64),
    Failed(String),
    /// The export goes on, but not as asked (a SoundFont that failed to load).
    Warning(String),
}

pub struct Studio {
    env: StudioEnv,
    pub doc: Document,
    pub roll: PianoRoll,
    pub generate: GeneratePanel,
    pub jam: JamPanel,
    pub train: TrainPanel,
    pub training_view: TrainingView,
    pub library: LibraryPanel,
    pub tab: Tab,
    /// Roll or training view (the latter only while the Train tab is open).
    pub central: Central,
    pub status: Status,
    recent_files: Vec<PathBuf>,
    volume: f32,
    soundfont: Option<PathBuf>,
    loaded_revision: Option<u64>,
    fit_pending: bool,
    export: Option<Job<ExportMsg>>,
    roll_width: f32,
    takes_store: TakeStore,
    /// How many of the generate panel's takes have been offered to the store.
    takes_seen: usize,
    /// Takes that earlier sessions left behind (they did not close cleanly).
    pub restorable: Vec<PathBuf>,
    /// An action waiting on Save / Discard / Cancel.
    pub pending: Option<PendingAction>,
    /// The user has answered: the next close request goes through.
    closing_allowed: bool,
    path_entry: Option<PathEntry>,
}

const DEMO_PIECE: &str = "piano/satie-gymnopedie-no1.mid";

impl Studio {
    pub fn new(env: StudioEnv, settings: StudioSettings) -> Studio {
        let mut folders = settings.library_folders.clone();
        let demo = crate::assets::demo_corpus_dir();
        if !folders.contains(&demo) {
            folders.insert(0, demo);
        }
        let env_session_root = env.session_root.clone();
        let mut studio = Studio {
            env,
            doc: Document::default(),
            roll: settings.roll,
            generate: GeneratePanel::new(settings.generate),
            training_view: TrainingView::new(settings.train.view.clone()),
            jam: JamPanel::default(),
            train: TrainPanel::new(settings.train),
            library: LibraryPanel::new(&folders),
            tab: settings.tab,
            central: settings.central,
            status: Status::default(),
            recent_files: settings.recent_files,
            volume: settings.volume,
            soundfont: None,
            loaded_revision: None,
            fit_pending: true,
            export: None,
            roll_width: 800.0,
            takes_store: TakeStore::new(&env_session_root),
            takes_seen: 0,
            restorable: Vec::new(),
            pending: None,
            closing_allowed: false,
            path_entry: None,
        };
        studio.restorable = studio.takes_store.left_by_earlier_sessions();
        studio.env.output.set_volume(studio.volume);
        if let Some(font) = settings.soundfont {
            studio.use_soundfont(&font);
        }
        studio
    }

    /// Opens the last file, or the demo piece on a first start.
    pub fn open_startup_piece(&mut self) {
        let candidates = self
            .recent_files
            .first()
            .cloned()
            .into_iter()
            .chain(std::iter::once(
                crate::assets::demo_corpus_dir().join(DEMO_PIECE),
            ));
        for path in candidates {
            if path.is_file() && self.open_path(&path).is_ok() {
                return;
            }
        }
    }

    pub fn settings(&self) -> StudioSettings {
        StudioSettings {
            generate: self.generate.settings.clone(),
            train: TrainSettings {
                view: self.training_view.settings.clone(),
                ..self.train.settings.clone()
            },
            roll: self.roll.clone(),
            tab: self.tab,
            central: self.central,
            recent_files: self.recent_files.clone(),
            library_folders: self.library.folders(),
            volume: self.volume,
            soundfont: self.soundfont.clone(),
        }
    }

    fn say(&mut self, text: impl Into<String>) {
        self.status = Status {
            text: text.into(),
            is_error: false,
        };
    }

    fn fail(&mut self, text: impl Into<String>) {
        self.status = Status {
            text: text.into(),
            is_error: true,
        };
    }

    /// Opens a MIDI file onto the roll: the one path the dialog, drag and drop, the library and
    /// the recent list all use.
    pub fn open_path(&mut self, path: &Path) -> Result<(), String> {
        match read_midi_with_tempo(path) {
            Ok((perf, tempo)) => {
                let name = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                let mut doc = Document::new(name.clone(), &perf, NoteOrigin::Loaded);
                doc.path = Some(path.to_path_buf());
                doc.tempo_bpm = tempo;
                self.doc = doc;
                self.fit_pending = true;
                self.recent_files.retain(|p| p != path);
                self.recent_files.insert(0, path.to_path_buf());
                self.recent_files.truncate(10);
                self.say(format!(
                    "opened {name}: {} notes, {:.1} s",
                    perf.len(),
                    perf.end_time()
                ));
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                self.fail(message.clone());
                Err(message)
            }
        }
    }

    pub fn save_to(&mut self, path: &Path) -> Result<(), String> {
        let perf = self.doc.performance();
        match write_midi(&perf, path) {
            Ok(()) => {
                self.doc.mark_saved();
                self.say(format!("saved {} notes to {}", perf.len(), path.display()));
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                self.fail(message.clone());
                Err(message)
            }
        }
    }

    fn export_wav(&mut self, ctx: Option<egui::Context>, path: PathBuf) {
        let perf = self.doc.performance();
        let font_path = self.soundfont.clone();
        self.say(format!("rendering {}…", path.display()));
        self.export = Some(Job::spawn(ctx, "export", move |tx, _| {
            // A user's SoundFont may be large: it is read here, off the UI thread.
            let (font, fallback) = match font_path.as_deref().map(PianoSoundFont::from_file) {
                None => (PianoSoundFont::builtin(), None),
                Some(Ok(font)) => (font, None),
                Some(Err(e)) => (
                    PianoSoundFont::builtin(),
                    Some(format!("{e}: exported with the built-in piano instead")),
                ),
            };
            if let Some(why) = fallback {
                tx.send(ExportMsg::Warning(why));
            }
            let result = render_performance(&perf, &font)
                .map_err(|e| e.to_string())
                .and_then(|audio| {
                    write_wav(&path, &audio)
                        .map(|_| audio.seconds())
                        .map_err(|e| e.to_string())
                });
            tx.send(match result {
                Ok(seconds) => ExportMsg::Done(path, seconds),
                Err(e) => ExportMsg::Failed(e),
            });
        }));
    }

    fn use_soundfont(&mut self, path: &Path) {
        match PianoSoundFont::from_file(path) {
            Ok(font) => {
                let name = font.name.clone();
                self.env.output = Box::new(SynthOut::new(font));
                self.env.output.set_volume(self.volume);
                self.soundfont = Some(path.to_path_buf());
                self.loaded_revision = None;
                self.say(format!("playing through {name}"));
            }
            Err(e) => self.fail(format!("{e}; keeping the current sound")),
        }
    }

    fn use_builtin_synth(&mut self) {
        self.env.output = Box::new(SynthOut::new(PianoSoundFont::builtin()));
        self.env.output.set_volume(self.volume);
        self.soundfont = None;
        self.loaded_revision = None;
    }

    fn use_midi_port(&mut self, name: String) {
        self.env.output = Box::new(MidiPortOut::new(
            self.env.midi_out.clone(),
            PortChoice::Name(name.clone()),
            name,
        ));
        self.loaded_revision = None;
    }

    /// Plays into a virtual port named "EchoAI Studio" that a DAW records from.
    pub fn use_virtual_port(&mut self) {
        let name = crate::live_midi::CLIENT_NAME.to_string();
        self.env.output = Box::new(MidiPortOut::new(
            self.env.midi_out.clone(),
            PortChoice::Virtual(name.clone()),
            format!("virtual port {name}"),
        ));
        self.loaded_revision = None;
    }

    pub fn is_playing(&self) -> bool {
        self.env.output.is_playing()
    }

    pub fn playhead(&self) -> f64 {
        self.env.output.playhead()
    }

    pub fn toggle_play(&mut self) {
        self.sync_output();
        if self.env.output.is_playing() {
            self.env.output.pause();
        } else if let Err(e) = self.env.output.play() {
            self.fail(e);
        }
    }

    pub fn stop(&mut self) {
        self.env.output.stop();
    }

    fn sync_output(&mut self) {
        if self.loaded_revision != Some(self.doc.revision()) {
            let position = self.env.output.playhead();
            let playing = self.env.output.is_playing();
            if let Err(e) = self.env.output.load(&self.doc.performance()) {
                self.fail(e);
            }
            self.env.output.seek(position);
            if playing {
                let _ = self.env.output.play();
            }
            self.loaded_revision = Some(self.doc.revision());
        }
    }

    fn show_take(&mut self, index: usize) {
        if let Some(entry) = self.generate.takes.get(index) {
            self.doc = Document::from_take(
                entry.name.clone(),
                &entry.take.performance,
                entry.take.primer_seconds,
            );
            self.fit_pending = true;
        }
    }

    fn handle_jam_events(&mut self, events: Vec<JamEvent>) {
        for e in events {
            match e {
                JamEvent::Notes(notes) => {
                    // The player's notes as the primer's colour, the model's answers as its own.
                    let player = crate::performance::Performance::from_notes(
                        notes
                            .iter()
                            .filter(|n| !n.by_model)
                            .map(|n| n.note)
                            .collect(),
                    );
                    self.doc = Document::new("Jam", &player, NoteOrigin::Primer);
                    for n in notes.iter().filter(|n| n.by_model) {
                        self.doc.append(n.note, NoteOrigin::Generated);
                    }
                    self.fit_pending = true;
                }
                JamEvent::Take(perf) => {
                    self.generate.add_jam_take(perf);
                    self.say("the jam session is a take now");
                }
                JamEvent::Message(m) => self.say(m),
                JamEvent::Error(m) => self.fail(m),
            }
        }
    }

    fn handle_generate_events(&mut self, events: Vec<GenerateEvent>) {
        for e in events {
            match e {
                GenerateEvent::ShowTake(i) => self.show_take(i),
                GenerateEvent::Started(primer) => {
                    self.env.output.stop();
                    self.doc = Document::new("Generating…", &primer, NoteOrigin::Primer);
                    self.fit_pending = true;
                    self.say("generating…");
                }
                GenerateEvent::LiveNote(note) => self.doc.append(note, NoteOrigin::Generated),
                GenerateEvent::Message(m) => self.say(m),
                GenerateEvent::Error(m) => self.fail(m),
            }
        }
    }

    /// The window is closing: a training run stops with a final checkpoint, and this waits
    /// for it (the run's thread would otherwise die with the process, mid-step or mid-save).
    pub fn shut_down(&mut self) {
        self.train
            .finish_for_exit(std::time::Duration::from_secs(120));
    }

    /// Reads the runs list again in the background; the old list stays until the new one is in.
    fn reread_runs(&mut self) {
        let runs_dir = self.train.settings.runs_dir.clone();
        self.training_view.refresh(None, &runs_dir);
    }

    fn handle_train_events(&mut self, events: Vec<TrainPanelEvent>) {
        for e in events {
            match e {
                TrainPanelEvent::Checkpoint(path) => {
                    // The run's final checkpoint: the runs list shows it as it now is.
                    self.reread_runs();
                    self.generate.add_checkpoint(path.clone());
                    self.say(format!(
                        "checkpoint {} is ready in the Generate tab",
                        path.display()
                    ));
                }
                // From its first checkpoint on, the run is on disk and listed, not "no runs yet".
                TrainPanelEvent::CheckpointSaved => self.reread_runs(),
                TrainPanelEvent::OpenView => self.central = Central::Training,
                TrainPanelEvent::Message(m) => self.say(m),
                TrainPanelEvent::Error(m) => self.fail(m),
            }
        }
    }

    fn handle_view_actions(&mut self, actions: Vec<ViewAction>, ctx: &egui::Context) {
        for a in actions {
            match a {
                ViewAction::Play(path) => {
                    self.central = Central::Roll;
                    self.request_open(path.clone());
                    if self.doc.path.as_deref() == Some(path.as_path()) {
                        self.env.output.stop();
                        self.toggle_play();
                    }
                }
                ViewAction::Resume(folder) => {
                    if let Err(e) = self.train.resume_run(Some(ctx.clone()), folder) {
                        self.fail(e);
                    }
                }
                ViewAction::Message(m) => self.say(m),
                ViewAction::Error(m) => self.fail(m),
            }
        }
    }

    /// The Train tab's toggle between the roll and the training view.
    fn central_toggle(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            ui.selectable_value(&mut self.central, Central::Roll, "Piano roll");
            ui.selectable_value(&mut self.central, Central::Training, "Training view");
        });
    }

    fn shortcuts(&mut self, ui: &mut Ui) {
        let ctx = ui.ctx().clone();
        let typing = ctx.egui_wants_keyboard_input();
        let shortcut = |m: Modifiers, k: Key| {
            ctx.input_mut(|i| i.consume_shortcut(&KeyboardShortcut::new(m, k)))
        };
        if shortcut(Modifiers::COMMAND, Key::O) {
            self.open_dialog();
        }
        if shortcut(Modifiers::COMMAND, Key::S) {
            self.save_dialog();
        }
        if shortcut(Modifiers::COMMAND, Key::G) {
            self.generate.request_generate();
            self.tab = Tab::Generate;
        }
        if shortcut(Modifiers::COMMAND, Key::Z) && self.doc.undo() {
            self.say("undone");
        }
        if shortcut(Modifiers::COMMAND, Key::A) {
            self.doc.select_all();
        }
        if typing {
            return;
        }
        if shortcut(Modifiers::NONE, Key::Space) {
            self.toggle_play();
        }
        if shortcut(Modifiers::NONE, Key::Home) {
            self.env.output.seek(0.0);
            self.roll.view_start = 0.0;
        }
        if shortcut(Modifiers::NONE, Key::Delete) || shortcut(Modifiers::NONE, Key::Backspace) {
            let n = self.doc.delete_selected();
            if n > 0 {
                self.say(format!("deleted {n} notes (Ctrl+Z to undo)"));
            }
        }
        if shortcut(Modifiers::NONE, Key::Plus) || shortcut(Modifiers::NONE, Key::Equals) {
            let anchor = self.roll.view_start;
            self.roll.zoom_time(1.25, anchor);
        }
        if shortcut(Modifiers::NONE, Key::Minus) {
            let anchor = self.roll.view_start;
            self.roll.zoom_time(0.8, anchor);
        }
    }

    fn open_dialog(&mut self) {
        let answer = self.env.dialogs.open_midi();
        match answer {
            Some(p) => self.request_open(p),
            None if self.env.dialogs.take_unopened() => {
                self.offer_path_entry(PathPurpose::OpenMidi)
            }
            None => {}
        }
    }

    fn save_dialog(&mut self) {
        let name = suggested_file_name(&self.doc.name, "mid");
        let answer = self.env.dialogs.save_midi(&name);
        match answer {
            Some(p) => {
                let _ = self.save_to(&p);
            }
            None if self.env.dialogs.take_unopened() => {
                self.offer_path_entry(PathPurpose::SaveMidi)
            }
            None => {}
        }
    }

    fn export_dialog(&mut self, ctx: Option<egui::Context>) {
        let name = suggested_file_name(&self.doc.name, "wav");
        let answer = self.env.dialogs.save_wav(&name);
        match answer {
            Some(p) => self.export_wav(ctx, p),
            None if self.env.dialogs.take_unopened() => {
                self.offer_path_entry(PathPurpose::ExportWav)
            }
            None => {}
        }
    }

    fn offer_path_entry(&mut self, purpose: PathPurpose) {
        self.fail(
            "the system file dialog could not open (is xdg-desktop-portal running?): type a path instead",
        );
        self.path_entry = Some(PathEntry::new(purpose));
    }

    /// Folders of recently opened files, for the typed-path window.
    fn recent_folders(&self) -> Vec<PathBuf> {
        let mut folders: Vec<PathBuf> = Vec::new();
        for file in &self.recent_files {
            if let Some(parent) = file.parent()
                && !folders.iter().any(|f| f == parent)
            {
                folders.push(parent.to_path_buf());
            }
        }
        folders.truncate(5);
        folders
    }

    fn path_entry_ui(&mut self, ui: &Ui) {
        let folders = self.recent_folders();
        let Some(entry) = &mut self.path_entry else {
            return;
        };
        let Some(answer) = super::path_entry::ui(ui, entry, &folders) else {
            return;
        };
        let purpose = entry.purpose;
        self.path_entry = None;
        if let Some(path) = answer {
            match purpose {
                PathPurpose::OpenMidi => self.request_open(path),
                PathPurpose::SaveMidi => {
                    let _ = self.save_to(&path);
                }
                PathPurpose::ExportWav => self.export_wav(Some(ui.ctx().clone()), path),
            }
        }
    }

    /// What closing now would lose, one line each (empty: nothing).
    pub fn unsaved_work(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.doc.is_modified() {
            lines.push(format!("\"{}\" has unsaved changes", self.doc.name));
        }
        let takes = self.takes_store.kept();
        if takes > 0 {
            lines.push(format!(
                "{takes} take(s) of this session are not saved as files; they stay in the session folder (and come back at the next start) unless you discard them"
            ));
        }
        lines
    }

    /// Opens `path`, first asking about unsaved edits of the piece on the roll.
    pub fn request_open(&mut self, path: PathBuf) {
        if self.doc.is_modified() {
            self.pending = Some(PendingAction::Open(path));
        } else {
            let _ = self.open_path(&path);
        }
    }

    /// The window asks to close: true lets it, false means the user is being asked first.
    pub fn request_close(&mut self) -> bool {
        if self.closing_allowed {
            return true;
        }
        if self.unsaved_work().is_empty() {
            self.takes_store.discard_own();
            return true;
        }
        self.pending = Some(PendingAction::Close);
        false
    }

    /// Acts on the answer to the unsaved-work question.
    pub fn answer_unsaved(&mut self, choice: Choice, ctx: Option<&egui::Context>) {
        let Some(action) = self.pending.take() else {
            return;
        };
        match choice {
            Choice::Cancel => return,
            Choice::Save => {
                self.save_dialog();
                if self.doc.is_modified() {
                    // Not saved (cancelled, or failed with a message): ask again.
                    self.pending = Some(action);
                    return;
                }
            }
            Choice::Discard => {
                if action == PendingAction::Close {
                    self.takes_store.discard_own();
                }
            }
        }
        match action {
            PendingAction::Open(path) => {
                let _ = self.open_path(&path);
            }
            PendingAction::Close => {
                self.closing_allowed = true;
                if let Some(ctx) = ctx {
                    ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                }
            }
        }
    }

    /// Brings back the takes of earlier sessions into the take list (and this session's store).
    pub fn restore_earlier_takes(&mut self) {
        let (restored, problems) = self.takes_store.restore_earlier();
        let count = restored.len();
        for (from, perf) in restored {
            self.generate.add_restored_take(from, perf);
        }
        self.keep_new_takes();
        if self.takes_store.kept() >= count {
            self.takes_store.discard_earlier();
        }
        self.restorable.clear();
        match problems.first() {
            Some(p) => self.fail(format!(
                "restored {count} take(s); some could not be read: {p}"
            )),
            None => self.say(format!("restored {count} take(s) from the last session")),
        }
    }

    pub fn discard_earlier_takes(&mut self) {
        self.takes_store.discard_earlier();
        self.restorable.clear();
        self.say("discarded the takes of the last session");
    }

    /// Writes every take not yet kept into this session's folder.
    fn keep_new_takes(&mut self) {
        while self.takes_seen < self.generate.takes.len() {
            let perf = self.generate.takes[self.takes_seen]
                .take
                .performance
                .clone();
            self.takes_seen += 1;
            if let Err(e) = self.takes_store.keep(&perf) {
                self.fail(e);
            }
        }
    }

    fn restore_prompt_ui(&mut self, ui: &Ui) {
        if self.restorable.is_empty() || self.pending.is_some() {
            return;
        }
        let count = self.restorable.len();
        let mut answer = None;
        egui::Modal::new(egui::Id::unique("restore-takes")).show(ui.ctx(), |ui| {
            ui.heading("Restore takes?");
            ui.label(format!(
                "The last session did not close cleanly. It left {count} take(s)."
            ));
            ui.horizontal(|ui| {
                if ui.button("Restore").clicked() {
                    answer = Some(true);
                }
                if ui.button("Discard").clicked() {
                    answer = Some(false);
                }
            });
        });
        match answer {
            Some(true) => self.restore_earlier_takes(),
            Some(false) => self.discard_earlier_takes(),
            None => {}
        }
    }

    fn toolbar(&mut self, ui: &mut Ui) {
        ui.horizontal_wrapped(|ui| {
            if ui.button("Open MIDI").on_hover_text("Ctrl+O").clicked() {
                self.open_dialog();
            }
            if ui
                .add_enabled(!self.doc.is_empty(), egui::Button::new("Save MIDI"))
                .on_hover_text("Ctrl+S")
                .clicked()
            {
                self.save_dialog();
            }
            if ui
                .add_enabled(
                    !self.doc.is_empty() && self.export.is_none(),
                    egui::Button::new("Export WAV"),
                )
                .clicked()
            {
                self.export_dialog(Some(ui.ctx().clone()));
            }
            ui.separator();
            let playing = self.env.output.is_playing();
            if ui
                .button(if playing { "Pause" } else { "Play" })
                .on_hover_text("Space")
                .clicked()
            {
                self.toggle_play();
            }
            if ui.button("Stop").clicked() {
                self.stop();
            }
            let t = self.env.output.playhead();
            ui.monospace(format!(
                "{}:{:05.2} / {}:{:05.2}",
                (t / 60.0) as u32,
                t % 60.0,
                (self.doc.end_time() / 60.0) as u32,
                self.doc.end_time() % 60.0
            ));
            ui.separator();
            let current = self.env.output.name();
            let output_label = ui.label("Output");
            egui::ComboBox::from_id_salt("output")
                .selected_text(current)
                .show_ui(ui, |ui| {
                    if ui.selectable_label(false, "Built-in piano").clicked() {
                        self.use_builtin_synth();
                    }
                    if ui.selectable_label(false, "SoundFont (.sf2)…").clicked()
                        && let Some(p) = self.env.dialogs.open_soundfont()
                    {
                        self.use_soundfont(&p);
                    }
                    if cfg!(unix) {
                        if ui
                            .selectable_label(false, "MIDI: virtual port \"EchoAI Studio\"")
                            .on_hover_text(
                                "A port a DAW records from: arm a track on this input, press Play here",
                            )
                            .clicked()
                        {
                            self.use_virtual_port();
                        }
                    } else {
                        ui.label(
                            "Virtual MIDI port: not available on Windows; install a loopback \
                             driver such as loopMIDI and choose its port",
                        );
                    }
                    match self.env.midi_out.ports() {
                        Ok(ports) => {
                            for port in ports {
                                if ui
                                    .selectable_label(false, format!("MIDI: {port}"))
                                    .clicked()
                                {
                                    self.use_midi_port(port);
                                }
                            }
                        }
                        Err(e) => {
                            ui.label(format!("MIDI outputs: {e}"));
                        }
                    }
                })
                .response
                .labelled_by(output_label.id);
            let mut volume = self.volume;
            if ui
                .add(
                    egui::Slider::new(&mut volume, 0.0..=1.0)
                        .text("volume")
                        .show_value(false),
                )
                .changed()
            {
                self.volume = volume;
                self.env.output.set_volume(volume);
            }
            ui.separator();
            if ui
                .button("Fit")
                .on_hover_text("Show the whole piece")
                .clicked()
            {
                self.fit_pending = true;
            }
            ui.checkbox(&mut self.roll.follow_playhead, "Follow");
            if ui.button("Keys +").on_hover_text("Taller keys").clicked() {
                self.roll.zoom_pitch(1.2);
            }
            if ui.button("Keys -").on_hover_text("Shorter keys").clicked() {
                self.roll.zoom_pitch(1.0 / 1.2);
            }
        });
    }

    fn status_bar(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            if self.generate.is_generating() {
                super::busy::busy_indicator(ui);
                ui.label("generating");
            }
            if self.train.is_training() {
                super::busy::passive_busy_indicator(ui);
                ui.label("training");
            }
            if self.export.is_some() {
                super::busy::busy_indicator(ui);
                ui.label("exporting");
            }
            let color = if self.status.is_error {
                ui.visuals().error_fg_color
            } else {
                ui.visuals().text_color()
            };
            ui.colored_label(color, &self.status.text);
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                ui.label(format!(
                    "{} · {} notes · {} selected",
                    self.doc.name,
                    self.doc.len(),
                    self.doc.selection_count()
                ));
            });
        });
    }

    pub fn ui(&mut self, ui: &mut Ui) {
        let ctx = ui.ctx().clone();
        let events = self.generate.poll();
        self.handle_generate_events(events);
        let events = self.train.poll();
        self.handle_train_events(events);
        self.keep_new_takes();
        if ctx.input(|i| i.viewport().close_requested()) && !self.request_close() {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
        }
        if let Some(action) = self.pending.clone() {
            let unsaved = self.unsaved_work();
            if let Some(choice) = super::unsaved::ask(ui, &action, &unsaved) {
                self.answer_unsaved(choice, Some(&ctx));
            }
        }
        self.restore_prompt_ui(ui);
        self.path_entry_ui(ui);
        if let Some(job) = &mut self.export {
            let messages = job.poll();
            let finished = job.is_finished();
            let failure = if finished { job.failure() } else { None };
            for m in messages {
                match m {
                    ExportMsg::Done(p, s) => {
                        self.say(format!("exported {s:.1} s of audio to {}", p.display()))
                    }
                    ExportMsg::Failed(e) | ExportMsg::Warning(e) => self.fail(e),
                }
            }
            if finished {
                if let Some(why) = failure {
                    self.fail(format!("the export stopped unexpectedly: {why}"));
                }
                self.export = None;
            }
        }
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        });
        if let Some(p) = dropped.into_iter().next() {
            self.request_open(p);
        }
        self.shortcuts(ui);

        egui::Panel::top("toolbar").show(ui, |ui| self.toolbar(ui));
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar(ui));
        egui::Panel::left("side")
            .default_size(330.0)
            .resizable(true)
            .show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.selectable_value(&mut self.tab, Tab::Generate, "Generate");
                    ui.selectable_value(&mut self.tab, Tab::Train, "Train");
                    ui.selectable_value(&mut self.tab, Tab::Library, "Library");
                });
                ui.separator();
                egui::ScrollArea::vertical()
                    .id_salt("side-scroll")
                    .show(ui, |ui| match self.tab {
                        Tab::Generate => {
                            let context = PrimerContext {
                                selection: self.doc.selected_performance(),
                                piece: self.doc.performance(),
                                playhead: self.env.output.playhead(),
                            };
                            let events = self.generate.ui(
                                ui,
                                self.env.dialogs.as_ref(),
                                self.env.midi_in.as_ref(),
                                &context,
                            );
                            self.handle_generate_events(events);
                            let events = self.jam.ui(
                                ui,
                                self.env.midi_in.as_ref(),
                                &self.env.midi_out,
                                self.env.output.as_mut(),
                                self.generate.settings.checkpoint.clone(),
                                &self.generate.sampling_config(),
                            );
                            self.handle_jam_events(events);
                        }
                        Tab::Train => {
                            let events = self.train.ui(ui, self.env.dialogs.as_ref());
                            self.handle_train_events(events);
                        }
                        Tab::Library => {
                            if let Some(p) = self.library.ui(ui, self.env.dialogs.as_ref()) {
                                self.request_open(p);
                            }
                        }
                    });
            });
        // The thumbnail follows the view's smoothing.
        self.train.settings.view.smoothing = self.training_view.settings.smoothing;
        // Hidden or not, the view takes a finished runs listing, so it is current when opened.
        self.training_view.poll();
        let training_view = self.tab == Tab::Train && self.central == Central::Training;
        if training_view {
            egui::CentralPanel::default().show(ui, |ui| {
                self.central_toggle(ui);
                let actions = self
                    .training_view
                    .ui(ui, &self.train, self.env.dialogs.as_ref());
                self.handle_view_actions(actions, &ctx);
            });
            self.say_if_a_dialog_failed(&ctx);
            return;
        }
        egui::CentralPanel::default().show(ui, |ui| {
            if self.tab == Tab::Train {
                self.central_toggle(ui);
            }
            self.roll_width = ui.available_width();
            if std::mem::take(&mut self.fit_pending) {
                self.roll.fit(&self.doc, ui.available_size());
            }
            // While notes stream in, the output would reload every frame: it waits for the take.
            if !self.generate.is_generating() {
                self.sync_output();
            }
            let playing = self.env.output.is_playing();
            let playhead = self.env.output.playhead();
            if playing && self.roll.follow_playhead {
                self.roll.follow(playhead, self.roll_width);
            }
            let show_playhead = playing || playhead > 0.0;
            if let Some(RollAction::Seek(t)) =
                self.roll
                    .ui(ui, &mut self.doc, show_playhead.then_some(playhead))
            {
                self.env.output.seek(t);
            }
            if playing {
                ctx.request_repaint();
            }
        });
        self.say_if_a_dialog_failed(&ctx);
    }

    /// Open, Save and Export WAV offer a typed path; any other dialog that could not open (this
    /// frame, in a panel) says why rather than looking like a cancel.
    fn say_if_a_dialog_failed(&mut self, ctx: &egui::Context) {
        if self.env.dialogs.take_unopened() && self.path_entry.is_none() {
            self.fail(
                "the system file dialog could not open (is xdg-desktop-portal running?); Open, Save and Export WAV take a typed path",
            );
            ctx.request_repaint();
        }
    }
}
