//! The Train tab: a data folder (scanned with progress, summary and failures), the model and
//! schedule, device, Start / Pause / Stop / Checkpoint now, a live loss plot, throughput and ETA,
//! and resuming a checkpoint. Scanning and training run as jobs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use egui::Ui;
use egui_plot::{Line, Plot, Points};
use serde::{Deserialize, Serialize};

use super::curves::{CurveOptions, Curves};

use super::dialogs::Dialogs;
use super::jobs::Job;
use crate::corpus::{Corpus, CorpusSummary};
use crate::device::DeviceChoice;
use crate::model::{ModelConfig, ModelKind};
use crate::train::samples::{SampleFile, list_samples};
use crate::train::{
    RunHistory, StepPoint, TrainConfig, TrainControl, TrainData, TrainEvent, ValidationPoint, train,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainSettings {
    pub data_dir: Option<PathBuf>,
    /// New runs are written to `runs_dir/<model>-<time>`.
    pub runs_dir: PathBuf,
    /// The checkpoint of the current (or last) run.
    pub out_dir: Option<PathBuf>,
    pub kind: ModelKind,
    pub embed: usize,
    pub hidden: usize,
    pub layers: usize,
    pub window: usize,
    pub heads: usize,
    pub dropout: f64,
    pub steps: u64,
    pub batch: usize,
    pub seq: usize,
    pub lr: f64,
    pub device: DeviceChoice,
    /// Samples every N steps (0: only Sample now).
    #[serde(default = "default_sample_every")]
    pub sample_every: u64,
    #[serde(default)]
    pub view: super::training_view::TrainingViewSettings,
}

fn default_sample_every() -> u64 {
    500
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            data_dir: None,
            runs_dir: std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("."), PathBuf::from)
                .join("echoai-runs"),
            out_dir: None,
            kind: ModelKind::LstmAttention,
            embed: 128,
            hidden: 256,
            layers: 2,
            window: 64,
            heads: 4,
            dropout: 0.1,
            steps: 2000,
            batch: 16,
            seq: 256,
            lr: 1e-3,
            device: DeviceChoice::Auto,
            sample_every: default_sample_every(),
            view: Default::default(),
        }
    }
}

enum ScanMsg {
    Progress(usize, usize),
    Done(Arc<Corpus>),
    Failed(String),
}

enum TrainMsg {
    Event(TrainEvent),
}

pub enum TrainPanelEvent {
    /// A run finished or stopped with a checkpoint here.
    Checkpoint(PathBuf),
    /// A running run saved a checkpoint (it may be the run's first).
    CheckpointSaved,
    /// The thumbnail was clicked: show the training view.
    OpenView,
    Message(String),
    Error(String),
}

#[derive(Default)]
pub struct TrainPanel {
    pub settings: TrainSettings,
    scan: Option<Job<ScanMsg>>,
    scan_progress: (usize, usize),
    pub corpus: Option<Arc<Corpus>>,
    run: Option<(Job<TrainMsg>, TrainControl)>,
    paused: bool,
    /// The current (or last) run's curves: every step as it arrives, thinned as the engine
    /// thins `trainer.json`; read back from the checkpoint for a resumed run.
    pub live: RunHistory,
    /// The current run's samples, by step.
    pub samples: Vec<SampleFile>,
    /// The settings of the current (or last) run.
    run_config: Option<TrainConfig>,
    /// The side panel's thumbnail of the loss.
    thumbnail: Curves,
    tokens_per_s: f64,
    eta_s: f64,
    peak_rss_bytes: Option<u64>,
    started: Option<Instant>,
    step: u64,
    total_steps: u64,
    resume: bool,
    /// The last run, when it died without finishing (found at start-up).
    unfinished: Option<crate::run_folder::UnfinishedRun>,
    /// Start the resume as soon as the data folder's scan is done.
    resume_after_scan: bool,
    /// For starting a run from `poll` (a resume waiting on a scan).
    ctx: Option<egui::Context>,
    /// The window is drawn by a software renderer: training steps wake it every
    /// [`SOFTWARE_STEP_REPAINT`], not [`STEP_REPAINT`].
    software_renderer: bool,
}

/// A step wakes the UI within this: at most ten frames a second, whatever the step rate.
pub const STEP_REPAINT: std::time::Duration = std::time::Duration::from_millis(100);
/// With a software renderer (llvmpipe: remote desktops, VMs, Xvfb) each frame is rasterised by
/// the CPU, on the cores the training team spins on, and a preempted member stalls the team:
/// one frame per step cost the studio ~10 % of the CLI's tokens/s on two cores.
pub const SOFTWARE_STEP_REPAINT: std::time::Duration = std::time::Duration::from_secs(2);

fn new_run_dir(runs: &std::path::Path, kind: ModelKind) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    runs.join(format!("{}-{stamp}", kind.name()))
}

impl TrainPanel {
    pub fn new(settings: TrainSettings) -> Self {
        let unfinished = settings
            .out_dir
            .as_deref()
            .and_then(crate::run_folder::unfinished_run);
        let mut panel = TrainPanel {
            settings,
            unfinished,
            ..Default::default()
        };
        // The last run's curves, samples and settings come back from its checkpoint.
        if let Some(run) = panel
            .settings
            .out_dir
            .as_deref()
            .filter(|d| crate::model::checkpoint::is_checkpoint(d))
            .and_then(|d| crate::train::runs::read_run(d).ok())
        {
            panel.live = run.history;
            panel.samples = run.samples;
            panel.run_config = run.config;
            panel.step = run.step;
            panel.total_steps = run.total_steps.unwrap_or(run.step);
        }
        panel
    }

    /// Whether the window is drawn by a software renderer: live training updates then come
    /// every [`SOFTWARE_STEP_REPAINT`] instead of every [`STEP_REPAINT`].
    pub fn set_software_renderer(&mut self, software: bool) {
        self.software_renderer = software;
    }

    /// How soon a training step wakes the UI.
    fn step_repaint(&self) -> std::time::Duration {
        if self.software_renderer {
            SOFTWARE_STEP_REPAINT
        } else {
            STEP_REPAINT
        }
    }

    /// The last run, if it died without finishing.
    pub fn unfinished_run(&self) -> Option<&crate::run_folder::UnfinishedRun> {
        self.unfinished.as_ref()
    }

    /// Continues the run that died: scans its data folder first when no corpus is loaded.
    pub fn resume_unfinished(&mut self, ctx: Option<egui::Context>) -> Result<(), String> {
        let run = self.unfinished.take().ok_or("no unfinished run")?;
        if run.checkpoint_step.is_none() {
            return Err(format!(
                "{} holds no checkpoint to resume",
                run.folder.display()
            ));
        }
        self.resume_run(ctx, run.folder)
    }

    /// Continues the run in `folder` (from the runs list or a dead run). Without a scanned corpus
    /// it scans the data folder first: the panel's, or else the one the checkpoint was trained on.
    pub fn resume_run(
        &mut self,
        ctx: Option<egui::Context>,
        folder: PathBuf,
    ) -> Result<(), String> {
        if self.run.is_some() {
            return Err("a run is going: stop it first".into());
        }
        if self.settings.data_dir.is_none()
            && let Ok(meta) = crate::model::checkpoint::read_meta(&folder)
            && !meta.data.root.is_empty()
        {
            self.settings.data_dir = Some(PathBuf::from(meta.data.root));
        }
        self.settings.out_dir = Some(folder);
        self.resume = true;
        if self.corpus.is_some() {
            return self.start(ctx);
        }
        let dir = self
            .settings
            .data_dir
            .clone()
            .ok_or("choose the run's data folder first")?;
        self.resume_after_scan = true;
        self.scan(ctx, dir);
        Ok(())
    }

    /// The settings of the current (or last) run.
    pub fn run_config(&self) -> Option<&TrainConfig> {
        self.run_config.as_ref()
    }

    pub fn is_training(&self) -> bool {
        self.run.is_some()
    }

    pub fn is_scanning(&self) -> bool {
        self.scan.is_some()
    }

    /// Stops a scan in progress (its thread ends soon after; its result is dropped).
    pub fn cancel_scan(&mut self) {
        if let Some(scan) = self.scan.take() {
            scan.cancel();
        }
        self.resume_after_scan = false;
    }

    /// Starts scanning `dir` in the background.
    pub fn scan(&mut self, ctx: Option<egui::Context>, dir: PathBuf) {
        // Choosing another folder cancels the scan of the last one.
        self.cancel_scan();
        self.settings.data_dir = Some(dir.clone());
        self.corpus = None;
        self.scan_progress = (0, 0);
        self.scan = Some(Job::spawn(ctx, "scan", move |tx, cancel| {
            let progress = |done, total| {
                tx.send(ScanMsg::Progress(done, total));
            };
            match Corpus::load_until(&dir, &progress, &cancel) {
                Err(crate::corpus::CorpusError::Cancelled) => {}
                Ok(c) if c.summary.files_ok == 0 => {
                    tx.send(ScanMsg::Failed(format!(
                        "no MIDI file in {} could be read",
                        dir.display()
                    )));
                }
                Ok(c) => {
                    tx.send(ScanMsg::Done(Arc::new(c)));
                }
                Err(e) => {
                    tx.send(ScanMsg::Failed(e.to_string()));
                }
            }
        }));
    }

    fn config(&self) -> TrainConfig {
        let s = &self.settings;
        TrainConfig {
            model: ModelConfig {
                kind: s.kind,
                embed: s.embed,
                hidden: s.hidden,
                layers: s.layers,
                window: s.window,
                heads: s.heads,
                dropout: s.dropout,
                ..ModelConfig::default()
            },
            steps: s.steps,
            batch: s.batch,
            seq_len: s.seq,
            lr: s.lr,
            warmup: (s.steps / 10).min(200),
            validate_every: (s.steps / 20).clamp(1, 200),
            checkpoint_every: (s.steps / 10).clamp(1, 500),
            sample_every: s.sample_every,
            device: s.device,
            ..TrainConfig::default()
        }
    }

    /// Puts a run's settings on the panel's controls.
    fn show_settings_of(&mut self, c: &TrainConfig) {
        let s = &mut self.settings;
        s.kind = c.model.kind;
        s.embed = c.model.embed;
        s.hidden = c.model.hidden;
        s.layers = c.model.layers;
        s.window = c.model.window;
        s.heads = c.model.heads;
        s.dropout = c.model.dropout;
        s.steps = c.steps;
        s.batch = c.batch;
        s.seq = c.seq_len;
        s.lr = c.lr;
        s.sample_every = c.sample_every;
    }

    /// Starts (or with `resume`, continues) a run on the scanned corpus.
    pub fn start(&mut self, ctx: Option<egui::Context>) -> Result<(), String> {
        let corpus = self
            .corpus
            .clone()
            .ok_or("choose and scan a data folder first")?;
        let out = match &self.settings.out_dir {
            Some(p) if self.resume => p.clone(),
            _ => new_run_dir(&self.settings.runs_dir, self.settings.kind),
        };
        self.settings.out_dir = Some(out.clone());
        // A resume continues the run as it was saved (only the device follows the panel);
        // the sliders show the saved settings.
        let config = if self.resume {
            let mut saved = crate::train::saved_config(&out).map_err(|e| {
                self.resume = false;
                e.to_string()
            })?;
            saved.device = self.settings.device;
            saved.sample_every = self.settings.sample_every;
            self.show_settings_of(&saved);
            saved
        } else {
            self.config()
        };
        config.validate()?;
        let control = TrainControl::default();
        let job_control = control.clone();
        let resume = std::mem::take(&mut self.resume);
        // A resume shows the run's curves so far, read back from its checkpoint.
        let earlier = resume
            .then(|| crate::train::runs::read_run(&out).ok())
            .flatten();
        self.live = earlier
            .as_ref()
            .map(|r| r.history.clone())
            .unwrap_or_default();
        self.samples = list_samples(&out);
        self.run_config = Some(config.clone());
        self.started = Some(Instant::now());
        self.paused = false;
        let step_repaint = self.step_repaint();
        let job = Job::spawn(ctx, "train", move |tx, _cancel| {
            let data = TrainData::from_corpus(&corpus);
            let mut on_event = |e: TrainEvent| {
                if matches!(e, TrainEvent::Step { .. }) {
                    tx.send_unhurried(TrainMsg::Event(e), step_repaint);
                } else {
                    tx.send(TrainMsg::Event(e));
                }
            };
            // Failures arrive as a `Failed` event too.
            let _ = train(&data, &config, &out, resume, &job_control, &mut on_event);
        });
        self.run = Some((job, control));
        Ok(())
    }

    /// Stops a run and waits (at most `limit`) until it has written its final checkpoint.
    pub fn finish_for_exit(&mut self, limit: std::time::Duration) {
        let Some((_, control)) = &self.run else {
            return;
        };
        control.request_stop();
        control.set_paused(false);
        let deadline = Instant::now() + limit;
        while let Some((job, _)) = &mut self.run {
            job.poll();
            if job.is_finished() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.run = None;
    }

    pub fn stop(&mut self) {
        if let Some((_, control)) = &self.run {
            control.request_stop();
        }
    }

    /// Asks the run to pause (or go on); `is_paused` turns true once it has.
    pub fn set_paused(&mut self, paused: bool) {
        if let Some((_, control)) = &self.run {
            control.set_paused(paused);
        }
    }

    /// The run has reported that it is paused between steps.
    pub fn is_paused(&self) -> bool {
        self.run.is_some() && self.paused
    }

    pub fn poll(&mut self) -> Vec<TrainPanelEvent> {
        let mut events = Vec::new();
        let (messages, scan_done) = match &mut self.scan {
            Some(scan) => (scan.poll(), scan.is_finished()),
            None => (Vec::new(), false),
        };
        if scan_done {
            if let Some(why) = self.scan.as_ref().and_then(|j| j.failure()) {
                events.push(TrainPanelEvent::Error(format!(
                    "the scan stopped unexpectedly: {why}"
                )));
            }
            self.scan = None;
        }
        {
            for m in messages {
                match m {
                    ScanMsg::Progress(d, t) => self.scan_progress = (d, t),
                    ScanMsg::Done(c) => {
                        events.push(TrainPanelEvent::Message(format!(
                            "{}: {} files, {:.1} h",
                            c.root.display(),
                            c.summary.files_ok,
                            c.summary.seconds / 3600.0
                        )));
                        self.corpus = Some(c);
                        if std::mem::take(&mut self.resume_after_scan)
                            && let Err(e) = self.start(self.ctx.clone())
                        {
                            events.push(TrainPanelEvent::Error(e));
                        }
                    }
                    ScanMsg::Failed(e) => events.push(TrainPanelEvent::Error(e)),
                }
            }
        }
        if let Some((job, _)) = &mut self.run {
            let mut done = job.is_finished();
            for TrainMsg::Event(e) in job.poll() {
                match e {
                    TrainEvent::Started {
                        start_step,
                        total_steps,
                        ..
                    } => {
                        self.step = start_step;
                        self.total_steps = total_steps;
                    }
                    TrainEvent::Step {
                        step,
                        loss,
                        lr,
                        tokens_per_s,
                        eta_s,
                        peak_rss_bytes,
                        grad_norm,
                        wall_s,
                    } => {
                        self.peak_rss_bytes = peak_rss_bytes;
                        self.step = step;
                        self.live.push_step(StepPoint {
                            step,
                            loss: loss as f32,
                            lr: lr as f32,
                            grad_norm: grad_norm as f32,
                            tokens_per_s: tokens_per_s as f32,
                            wall_s: wall_s as f32,
                        });
                        self.tokens_per_s = tokens_per_s;
                        self.eta_s = eta_s;
                    }
                    TrainEvent::Validation { step, nll } => {
                        let wall_s = self.live.wall_s();
                        self.live
                            .push_validation(ValidationPoint { step, nll, wall_s });
                    }
                    TrainEvent::Samples {
                        step,
                        files,
                        seconds,
                    } => {
                        if let Some(out) = &self.settings.out_dir {
                            self.samples = list_samples(out);
                        }
                        events.push(TrainPanelEvent::Message(format!(
                            "step {step}: {} samples in {seconds:.1} s",
                            files.len()
                        )));
                    }
                    TrainEvent::Paused { .. } => self.paused = true,
                    TrainEvent::Resumed { .. } => self.paused = false,
                    TrainEvent::Checkpoint { step, path } => {
                        events.push(TrainPanelEvent::Message(format!(
                            "step {step}: checkpoint in {}",
                            path.display()
                        )));
                        events.push(TrainPanelEvent::CheckpointSaved);
                    }
                    TrainEvent::Finished {
                        step,
                        path,
                        stopped_early,
                    } => {
                        let how = if stopped_early { "stopped" } else { "finished" };
                        events.push(TrainPanelEvent::Message(format!(
                            "training {how} at step {step}"
                        )));
                        events.push(TrainPanelEvent::Checkpoint(path));
                        done = true;
                    }
                    TrainEvent::Notice { message } => {
                        events.push(TrainPanelEvent::Message(message));
                    }
                    TrainEvent::Failed { reason } => {
                        events.push(TrainPanelEvent::Error(format!("training failed: {reason}")));
                        done = true;
                    }
                }
            }
            if done {
                if let Some(why) = job.failure() {
                    events.push(TrainPanelEvent::Error(format!(
                        "training stopped unexpectedly: {why}"
                    )));
                }
                self.run = None;
            }
        }
        events
    }

    pub fn ui(&mut self, ui: &mut Ui, dialogs: &dyn Dialogs) -> Vec<TrainPanelEvent> {
        let mut events = Vec::new();
        self.ctx = Some(ui.ctx().clone());
        let busy = self.run.is_some();
        if let Some(run) = &self.unfinished {
            ui.colored_label(ui.visuals().warn_fg_color, run.describe());
            if run.checkpoint_step.is_some()
                && ui
                    .add_enabled(!busy, egui::Button::new("Resume that run"))
                    .clicked()
                && let Err(e) = self.resume_unfinished(Some(ui.ctx().clone()))
            {
                events.push(TrainPanelEvent::Error(e));
            }
            ui.separator();
        }
        ui.heading("Data");
        ui.horizontal(|ui| {
            let label = self
                .settings
                .data_dir
                .as_deref()
                .map_or("no folder".into(), |p| p.display().to_string());
            ui.label(label);
        });
        ui.horizontal(|ui| {
            if ui
                .add_enabled(!busy, egui::Button::new("Choose folder…"))
                .clicked()
                && let Some(dir) = dialogs.pick_folder("Choose a folder of MIDI files")
            {
                self.scan(Some(ui.ctx().clone()), dir);
            }
            if ui
                .add_enabled(!busy, egui::Button::new("Demo corpus"))
                .clicked()
            {
                self.scan(Some(ui.ctx().clone()), crate::assets::demo_corpus_dir());
            }
        });
        if self.scan.is_some() {
            let (d, t) = self.scan_progress;
            ui.horizontal(|ui| {
                ui.add(
                    egui::ProgressBar::new(if t > 0 { d as f32 / t as f32 } else { 0.0 })
                        .desired_width(160.0)
                        .text(format!("scanning {d}/{t}")),
                );
                if ui.button("Cancel scan").clicked() {
                    self.cancel_scan();
                }
            });
        }
        if let Some(c) = &self.corpus {
            summary_ui(ui, &c.summary);
        }

        ui.separator();
        ui.heading("Model");
        ui.add_enabled_ui(!busy, |ui| {
            let s = &mut self.settings;
            ui.horizontal(|ui| {
                ui.selectable_value(
                    &mut s.kind,
                    ModelKind::LstmAttention,
                    "LSTM + local attention",
                );
                ui.selectable_value(&mut s.kind, ModelKind::Lstm, "LSTM");
            });
            egui::Grid::new("sizes").num_columns(4).show(ui, |ui| {
                labelled(
                    ui,
                    "embed",
                    egui::DragValue::new(&mut s.embed).range(8..=1024),
                );
                labelled(
                    ui,
                    "hidden",
                    egui::DragValue::new(&mut s.hidden).range(8..=2048),
                );
                ui.end_row();
                labelled(
                    ui,
                    "layers",
                    egui::DragValue::new(&mut s.layers).range(1..=6),
                );
                labelled(
                    ui,
                    "dropout",
                    egui::DragValue::new(&mut s.dropout)
                        .range(0.0..=0.8)
                        .speed(0.01),
                );
                ui.end_row();
                if s.kind == ModelKind::LstmAttention {
                    labelled(
                        ui,
                        "window",
                        egui::DragValue::new(&mut s.window).range(1..=512),
                    );
                    labelled(
                        ui,
                        "heads",
                        egui::DragValue::new(&mut s.heads).range(1..=16),
                    );
                    ui.end_row();
                }
                labelled(
                    ui,
                    "steps",
                    egui::DragValue::new(&mut s.steps).range(1..=1_000_000),
                );
                labelled(
                    ui,
                    "batch",
                    egui::DragValue::new(&mut s.batch).range(1..=256),
                );
                ui.end_row();
                labelled(
                    ui,
                    "sequence",
                    egui::DragValue::new(&mut s.seq).range(8..=4096),
                );
                labelled(
                    ui,
                    "learning rate",
                    egui::DragValue::new(&mut s.lr)
                        .range(1e-6..=1e-1)
                        .speed(1e-5),
                );
                ui.end_row();
                labelled(
                    ui,
                    "sample every",
                    egui::DragValue::new(&mut s.sample_every).range(0..=1_000_000),
                );
                ui.end_row();
            });
            egui::ComboBox::from_label("device")
                .selected_text(s.device.name())
                .show_ui(ui, |ui| {
                    for d in DeviceChoice::compiled_in() {
                        ui.selectable_value(&mut s.device, d, d.name());
                    }
                });
        });

        ui.separator();
        ui.horizontal_wrapped(|ui| {
            let can_start = !busy && self.corpus.is_some();
            if ui
                .add_enabled(can_start, egui::Button::new("Start training"))
                .clicked()
                && let Err(e) = self.start(Some(ui.ctx().clone()))
            {
                events.push(TrainPanelEvent::Error(e));
            }
            if ui
                .add_enabled(can_start, egui::Button::new("Resume checkpoint…"))
                .clicked()
                && let Some(dir) = dialogs.pick_folder("Choose a checkpoint to continue")
            {
                self.settings.out_dir = Some(dir);
                self.resume = true;
                if let Err(e) = self.start(Some(ui.ctx().clone())) {
                    events.push(TrainPanelEvent::Error(e));
                }
            }
            if let Some((_, control)) = &self.run {
                let label = if self.paused {
                    "Resume training"
                } else {
                    "Pause training"
                };
                if ui.button(label).clicked() {
                    control.set_paused(!self.paused);
                }
                if ui.button("Stop training").clicked() {
                    control.request_stop();
                    control.set_paused(false);
                }
                if ui.button("Checkpoint now").clicked() {
                    control.request_checkpoint();
                }
                if ui
                    .button("Sample now")
                    .on_hover_text("Two short pieces from the current weights")
                    .clicked()
                {
                    control.request_samples();
                }
            }
        });
        if self.run.is_some() || !self.live.points.is_empty() {
            let elapsed = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
            let memory = self.peak_rss_bytes.map_or(String::new(), |b| {
                format!("  ·  peak memory {}", crate::memory::format_bytes(b))
            });
            ui.label(format!(
                "step {}/{}  ·  {:.0} tokens/s  ·  elapsed {}  ·  ETA {}{memory}",
                self.step,
                self.total_steps,
                self.tokens_per_s,
                crate::train::format_duration(elapsed),
                crate::train::format_duration(self.eta_s)
            ));
            if self.software_renderer && self.run.is_some() {
                ui.weak(format!(
                    "updates every {} s: the window is drawn by a software renderer, on the \
                     cores that train",
                    SOFTWARE_STEP_REPAINT.as_secs()
                ));
            }
        }
        if self.thumbnail_ui(ui) {
            events.push(TrainPanelEvent::OpenView);
        }
        events
    }

    /// A small loss plot (raw, smoothed, validation); true when clicked (or its button is), to
    /// open the full training view.
    fn thumbnail_ui(&mut self, ui: &mut Ui) -> bool {
        let options = CurveOptions {
            smoothing: self.settings.view.smoothing,
            ..CurveOptions::default()
        };
        self.thumbnail.update(&self.live, options);
        let c = &self.thumbnail;
        let plot = Plot::new("loss")
            .height(150.0)
            .show_axes([false, true])
            .allow_drag(false)
            .allow_zoom(false)
            .allow_scroll(false)
            .allow_boxed_zoom(false)
            .allow_double_click_reset(false)
            .show_x(false)
            .show_y(false)
            .show(ui, |plot| {
                plot.line(
                    Line::new("training loss", c.loss.as_slice())
                        .color(egui::Color32::from_gray(120)),
                );
                plot.line(Line::new("smoothed", c.smoothed.as_slice()));
                plot.points(Points::new("validation NLL", c.validation.as_slice()).radius(3.0));
            });
        let clicked = plot
            .response
            .on_hover_text("Open the training view")
            .clicked();
        clicked || ui.button("Open training view").clicked()
    }
}

fn summary_ui(ui: &mut Ui, s: &CorpusSummary) {
    ui.label(format!(
        "{} files, {:.2} hours, {} notes, {} events\ntrain {} · validation {} · test {} files ({})",
        s.files_ok,
        s.seconds / 3600.0,
        s.notes,
        s.events,
        s.train.files,
        s.validation.files,
        s.test.files,
        if s.split_source == "hash" {
            "hash split"
        } else {
            "MAESTRO csv split"
        }
    ));
    if !s.failures.is_empty() {
        egui::CollapsingHeader::new(format!("{} files could not be read", s.failures.len())).show(
            ui,
            |ui| {
                for f in &s.failures {
                    ui.label(format!("{}: {}", f.path, f.error));
                }
            },
        );
    }
}

/// A label and its widget, linked so screen readers (and tests) find the widget by the label.
fn labelled(ui: &mut Ui, label: &str, widget: impl egui::Widget) {
    let label = ui.label(label);
    ui.add(widget).labelled_by(label.id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_software_renderer_slows_the_wake_ups_of_training_steps() {
        let mut panel = TrainPanel::default();
        assert_eq!(panel.step_repaint(), STEP_REPAINT);
        panel.set_software_renderer(true);
        assert_eq!(panel.step_repaint(), SOFTWARE_STEP_REPAINT);
        panel.set_software_renderer(false);
        assert_eq!(panel.step_repaint(), STEP_REPAINT);
    }
}
