//! The training view: the central area's alternative to the roll while the Train tab is open.
//! Loss (raw and bias-corrected smoothed), validation NLL, learning rate, gradient norm and
//! tokens/s against step or wall time; the run's settings; the runs list with overlays and
//! Resume; the run's samples; CSV and PNG export.
//!
//! Runs are read through the engine (`train::runs`) in a job, never parsed here; the lines are
//! cached (`curves.rs`) so a frame borrows them instead of copying a history.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use egui::{Color32, Ui};
use egui_plot::{Legend, Line, Plot, PlotPoint, Points};
use serde::{Deserialize, Serialize};

use super::curves::{CurveOptions, Curves, XAxis};
use super::jobs::Job;
use super::train_panel::TrainPanel;
use crate::train::TrainConfig;
use crate::train::runs::{RunRecord, list_runs};

/// What persists of the view.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainingViewSettings {
    pub smoothing: f64,
    pub log_y: bool,
    pub x: XAxis,
    /// Checkpoint folders the user added to the list (beyond the runs folder).
    pub added: Vec<PathBuf>,
    /// Runs whose curves are overlaid.
    pub ticked: Vec<PathBuf>,
}

impl Default for TrainingViewSettings {
    fn default() -> Self {
        TrainingViewSettings {
            smoothing: 0.9,
            log_y: false,
            x: XAxis::Step,
            added: Vec::new(),
            ticked: Vec::new(),
        }
    }
}

impl TrainingViewSettings {
    fn options(&self) -> CurveOptions {
        CurveOptions {
            smoothing: self.smoothing,
            log_y: self.log_y,
            x: self.x,
        }
    }
}

/// What the view asks the studio to do.
pub enum ViewAction {
    /// Open a sample on the roll and play it.
    Play(PathBuf),
    /// Continue this run.
    Resume(PathBuf),
    Message(String),
    Error(String),
}

type RunsMsg = (Vec<Arc<RunRecord>>, Vec<String>);

#[derive(Default)]
pub struct TrainingView {
    pub settings: TrainingViewSettings,
    live: Curves,
    overlays: HashMap<PathBuf, Curves>,
    /// The runs list, once read.
    pub runs: Option<Vec<Arc<RunRecord>>>,
    problems: Vec<String>,
    listing: Option<Job<RunsMsg>>,
    /// A PNG export's outcome, set by the screenshot callback.
    screenshot_done: Arc<std::sync::Mutex<Option<Result<PathBuf, String>>>>,
    plots_rect: Option<egui::Rect>,
}

const PALETTE: [Color32; 6] = [
    Color32::from_rgb(230, 140, 40),
    Color32::from_rgb(80, 180, 90),
    Color32::from_rgb(200, 80, 160),
    Color32::from_rgb(60, 170, 200),
    Color32::from_rgb(200, 200, 60),
    Color32::from_rgb(160, 120, 230),
];

impl TrainingView {
    pub fn new(settings: TrainingViewSettings) -> Self {
        TrainingView {
            settings,
            ..Default::default()
        }
    }

    /// Reads the runs list again (in the background): under `runs_dir` and the added folders.
    pub fn refresh(&mut self, ctx: Option<egui::Context>, runs_dir: &Path) {
        let root = runs_dir.to_path_buf();
        let added = self.settings.added.clone();
        self.listing = Some(Job::spawn(ctx, "runs", move |tx, _| {
            let (runs, problems) = list_runs(&root, &added);
            tx.send((runs.into_iter().map(Arc::new).collect(), problems));
        }));
    }

    /// The names of the runs whose curves are overlaid now.
    pub fn overlaid(&self) -> Vec<String> {
        let runs = self.runs.as_deref().unwrap_or_default();
        runs.iter()
            .filter(|r| self.overlays.contains_key(&r.folder))
            .map(|r| r.name.clone())
            .collect()
    }

    /// The current run's first raw and smoothed loss as drawn (the bias correction's check).
    pub fn first_loss_drawn(&self) -> Option<(f64, f64)> {
        Some((self.live.loss.first()?.y, self.live.smoothed.first()?.y))
    }

    /// True while the runs list is being read.
    pub fn is_listing(&self) -> bool {
        self.listing.is_some()
    }

    /// Takes the runs listing once it has been read.
    pub fn poll(&mut self) {
        let Some(job) = &mut self.listing else {
            return;
        };
        for (runs, problems) in job.poll() {
            self.runs = Some(runs);
            self.problems = problems;
            // Overlays are rebuilt from the fresh histories.
            self.overlays.clear();
        }
        if job.is_finished() {
            self.listing = None;
        }
    }

    pub fn ui(
        &mut self,
        ui: &mut Ui,
        panel: &TrainPanel,
        dialogs: &dyn super::dialogs::Dialogs,
    ) -> Vec<ViewAction> {
        let mut actions = Vec::new();
        // The app polls the listing every frame, shown or not (`poll`).
        if self.runs.is_none() && self.listing.is_none() {
            self.refresh(Some(ui.ctx().clone()), &panel.settings.runs_dir);
        }
        self.take_screenshot(ui, &mut actions);
        let options = self.settings.options();
        self.live.update(&panel.live, options);
        if let Some(runs) = &self.runs {
            for run in runs.iter() {
                if self.settings.ticked.contains(&run.folder) && !is_current(panel, run) {
                    self.overlays
                        .entry(run.folder.clone())
                        .or_default()
                        .update(&run.history, options);
                }
            }
        }
        egui::Panel::right("training-side")
            .default_size(330.0)
            .resizable(true)
            .show(ui, |ui| {
                egui::ScrollArea::vertical()
                    .id_salt("training-side-scroll")
                    .show(ui, |ui| self.side_ui(ui, panel, dialogs, &mut actions));
            });
        egui::CentralPanel::default().show(ui, |ui| {
            self.controls_ui(ui, panel, dialogs, &mut actions);
            self.plots_ui(ui, panel);
        });
        actions
    }

    fn controls_ui(
        &mut self,
        ui: &mut Ui,
        panel: &TrainPanel,
        dialogs: &dyn super::dialogs::Dialogs,
        actions: &mut Vec<ViewAction>,
    ) {
        ui.horizontal_wrapped(|ui| {
            let s = &mut self.settings;
            let label = ui.label("smoothing");
            ui.add(egui::Slider::new(&mut s.smoothing, 0.0..=0.999).fixed_decimals(3))
                .labelled_by(label.id);
            ui.checkbox(&mut s.log_y, "log y");
            ui.separator();
            ui.label("x:");
            ui.selectable_value(&mut s.x, XAxis::Step, "step");
            ui.selectable_value(&mut s.x, XAxis::WallTime, "wall time");
            ui.separator();
            let name = current_name(panel);
            let has_data = !panel.live.points.is_empty();
            if ui
                .add_enabled(has_data, egui::Button::new("Export CSV"))
                .clicked()
                && let Some(dir) = dialogs.pick_folder("Export the curves to a folder")
            {
                let path = free_name(&dir, &format!("{name}-curves"), "csv");
                let csv = panel.live.to_csv(self.settings.smoothing);
                actions.push(match crate::fsutil::write_atomic(&path, csv.as_bytes()) {
                    Ok(()) => ViewAction::Message(format!("curves written to {}", path.display())),
                    Err(e) => ViewAction::Error(format!("cannot write {}: {e}", path.display())),
                });
            }
            if ui
                .add_enabled(has_data, egui::Button::new("Export PNG"))
                .clicked()
                && let (Some(dir), Some(rect)) = (
                    dialogs.pick_folder("Export the plot to a folder"),
                    self.plots_rect,
                )
            {
                let path = free_name(&dir, &format!("{name}-plot"), "png");
                let ctx = ui.ctx().clone();
                let ppp = ctx.pixels_per_point();
                let slot = self.screenshot_done.clone();
                // egui hands the next frame's pixels to this callback (eframe: on the UI thread).
                ui.ctx().request_screenshot(move |image| {
                    let result = super::png_export::crop(&image, rect, ppp)
                        .and_then(|region| super::png_export::write_png(&path, &region))
                        .map(|()| path);
                    if let Ok(mut slot) = slot.lock() {
                        *slot = Some(result);
                    }
                    ctx.request_repaint();
                });
            }
        });
    }

    /// Reports a PNG export the screenshot callback finished.
    fn take_screenshot(&mut self, _ui: &Ui, actions: &mut Vec<ViewAction>) {
        let done = self.screenshot_done.lock().ok().and_then(|mut d| d.take());
        if let Some(result) = done {
            actions.push(match result {
                Ok(path) => ViewAction::Message(format!("plot written to {}", path.display())),
                Err(e) => ViewAction::Error(e),
            });
        }
    }

    fn plots_ui(&mut self, ui: &mut Ui, panel: &TrainPanel) {
        let x_label = match self.settings.x {
            XAxis::Step => "step",
            XAxis::WallTime => "seconds of training",
        };
        let log_y = self.settings.log_y;
        let y_fmt = move |mark: egui_plot::GridMark, _: &std::ops::RangeInclusive<f64>| {
            let v = if log_y {
                10f64.powf(mark.value)
            } else {
                mark.value
            };
            format!("{v:.3}")
        };
        let hover = move |pos: &egui_plot::HoverPosition<'_>| {
            let (name, p) = match pos {
                egui_plot::HoverPosition::NearDataPoint {
                    plot_name,
                    position,
                    ..
                } => (*plot_name, *position),
                egui_plot::HoverPosition::Elsewhere { position } => ("", *position),
            };
            let y = if log_y { 10f64.powf(p.y) } else { p.y };
            Some(format!("{name}\nx {:.1}\ny {y:.4}", p.x))
        };
        // Where the next widget goes: a panel's `min_rect` already spans the whole panel.
        let top = ui.cursor().top();
        let available = ui.available_height();
        let link = egui::Id::unique("training-x");
        let runs = self.runs.clone().unwrap_or_default();
        let overlays: Vec<(usize, &Arc<RunRecord>, &Curves)> = runs
            .iter()
            .filter_map(|r| self.overlays.get(&r.folder).map(|c| (r, c)))
            .enumerate()
            .map(|(i, (r, c))| (i, r, c))
            .collect();
        let live = &self.live;
        let name = current_name(panel);
        Plot::new("training-loss")
            .height((available * 0.6).max(160.0))
            .legend(Legend::default())
            .x_axis_label(x_label)
            .y_axis_label("nats / event")
            .y_axis_formatter(y_fmt)
            .label_formatter(hover)
            .link_axis(link, [true, false])
            .link_cursor(link, [true, false])
            .show(ui, |plot| {
                plot.line(
                    Line::new(format!("{name} loss"), live.loss.as_slice())
                        .color(Color32::from_gray(120)),
                );
                plot.line(
                    Line::new(format!("{name} smoothed"), live.smoothed.as_slice())
                        .color(Color32::from_rgb(90, 140, 255))
                        .width(2.0),
                );
                plot.line(
                    Line::new(format!("{name} validation"), live.validation.as_slice())
                        .color(Color32::from_rgb(240, 80, 80)),
                );
                plot.points(
                    Points::new(format!("{name} validation"), live.validation.as_slice())
                        .color(Color32::from_rgb(240, 80, 80))
                        .radius(3.0),
                );
                for (i, run, c) in &overlays {
                    let color = PALETTE[i % PALETTE.len()];
                    plot.line(
                        Line::new(format!("{} smoothed", run.name), c.smoothed.as_slice())
                            .color(color),
                    );
                    plot.points(
                        Points::new(format!("{} validation", run.name), c.validation.as_slice())
                            .color(color)
                            .radius(3.0),
                    );
                }
            });
        let small = [
            ("learning rate", 0usize),
            ("gradient norm", 1),
            ("tokens/s", 2),
        ];
        ui.columns(3, |cols| {
            for (col, (title, which)) in cols.iter_mut().zip(small) {
                col.label(title);
                let logged = log_y && which == 1;
                Plot::new(format!("training-{title}"))
                    .height((available * 0.35 - 30.0).max(100.0))
                    .x_axis_label(x_label)
                    .y_axis_formatter(move |m, _| {
                        let v = if logged { 10f64.powf(m.value) } else { m.value };
                        format!("{v:.3e}")
                    })
                    .link_axis(link, [true, false])
                    .link_cursor(link, [true, false])
                    .show(col, |plot| {
                        plot.line(Line::new(name.clone(), pick(live, which)));
                        for (i, run, c) in &overlays {
                            plot.line(
                                Line::new(run.name.clone(), pick(c, which))
                                    .color(PALETTE[i % PALETTE.len()]),
                            );
                        }
                    });
            }
        });
        let bottom = ui.cursor().top();
        self.plots_rect = Some(egui::Rect::from_x_y_ranges(
            ui.max_rect().x_range(),
            top..=bottom,
        ));
    }

    fn side_ui(
        &mut self,
        ui: &mut Ui,
        panel: &TrainPanel,
        dialogs: &dyn super::dialogs::Dialogs,
        actions: &mut Vec<ViewAction>,
    ) {
        ui.heading("Run");
        ui.label(current_name(panel));
        if let Some(config) = panel.run_config() {
            config_ui(ui, config);
        }
        ui.separator();
        ui.heading("Samples");
        if panel.samples.is_empty() {
            ui.label(format!(
                "none yet: every {} steps, or Sample now",
                panel.settings.sample_every
            ));
        }
        for sample in panel.samples.iter().rev() {
            let label = format!("step {} · {}", sample.step, sample.kind);
            if ui
                .button(label)
                .on_hover_text("Play it and show it on the roll")
                .clicked()
            {
                actions.push(ViewAction::Play(sample.path.clone()));
            }
        }
        ui.separator();
        ui.horizontal(|ui| {
            ui.heading("Runs");
            if ui
                .add_enabled(self.listing.is_none(), egui::Button::new("Refresh"))
                .clicked()
            {
                self.refresh(Some(ui.ctx().clone()), &panel.settings.runs_dir);
            }
            if ui.button("Add checkpoint folder…").clicked()
                && let Some(dir) = dialogs.pick_folder("Add a checkpoint folder to the runs")
            {
                if !self.settings.added.contains(&dir) {
                    self.settings.added.push(dir);
                }
                self.refresh(Some(ui.ctx().clone()), &panel.settings.runs_dir);
            }
        });
        for p in &self.problems {
            ui.colored_label(ui.visuals().warn_fg_color, p);
        }
        let Some(runs) = self.runs.clone() else {
            ui.label("reading…");
            return;
        };
        if runs.is_empty() {
            ui.label(format!(
                "no runs in {} yet",
                panel.settings.runs_dir.display()
            ));
        }
        for run in runs.iter() {
            let mut ticked = self.settings.ticked.contains(&run.folder);
            if ui.checkbox(&mut ticked, run.name.as_str()).changed() {
                self.settings.ticked.retain(|f| f != &run.folder);
                if ticked {
                    self.settings.ticked.push(run.folder.clone());
                } else {
                    self.overlays.remove(&run.folder);
                }
            }
            ui.label(run_summary(run));
            if run.resumable()
                && !panel.is_training()
                && ui
                    .button(format!("Resume {}", run.name))
                    .on_hover_text("Continue this run's training")
                    .clicked()
            {
                actions.push(ViewAction::Resume(run.folder.clone()));
            }
            ui.add_space(4.0);
        }
    }
}

/// The small plots' line of `c`: 0 learning rate, 1 gradient norm, else tokens/s.
fn pick(c: &Curves, which: usize) -> &[PlotPoint] {
    match which {
        0 => c.lr.as_slice(),
        1 => c.grad_norm.as_slice(),
        _ => c.tokens_per_s.as_slice(),
    }
}

fn is_current(panel: &TrainPanel, run: &RunRecord) -> bool {
    panel.settings.out_dir.as_deref() == Some(run.folder.as_path()) && !panel.live.points.is_empty()
}

fn current_name(panel: &TrainPanel) -> String {
    panel
        .settings
        .out_dir
        .as_deref()
        .map_or("this run".into(), crate::train::runs::run_name)
}

/// Model, sizes, steps, best validation NLL, wall time and device in two lines.
fn run_summary(run: &RunRecord) -> String {
    let m = &run.model;
    let steps = run
        .total_steps
        .map_or(format!("{}", run.step), |t| format!("{}/{t}", run.step));
    let best = run
        .best_validation
        .map_or("-".into(), |v| format!("{v:.3}"));
    let wall = run.wall_s.map_or("-".into(), crate::train::format_duration);
    format!(
        "{} E{} H{} L{} · {:.2} M params\nsteps {steps} · best val {best} · {wall} · {}",
        m.kind,
        m.embed,
        m.hidden,
        m.layers,
        run.parameters as f64 / 1e6,
        run.device.as_deref().unwrap_or("-")
    )
}

fn config_ui(ui: &mut Ui, c: &TrainConfig) {
    egui::Grid::new("run-config").num_columns(2).show(ui, |ui| {
        let m = &c.model;
        let rows = [
            ("model", m.kind.to_string()),
            ("embed / hidden", format!("{} / {}", m.embed, m.hidden)),
            ("layers", m.layers.to_string()),
            ("window / heads", format!("{} / {}", m.window, m.heads)),
            ("dropout", format!("{}", m.dropout)),
            ("steps", c.steps.to_string()),
            ("batch x seq", format!("{} x {}", c.batch, c.seq_len)),
            ("lr / warm-up", format!("{} / {}", c.lr, c.warmup)),
            ("weight decay", format!("{}", c.weight_decay)),
            ("clip", format!("{}", c.clip)),
            ("validate every", c.validate_every.to_string()),
            ("sample every", c.sample_every.to_string()),
            ("seed", c.seed.to_string()),
            ("device", c.device.name().to_string()),
        ];
        for (k, v) in rows {
            ui.label(k);
            ui.label(v);
            ui.end_row();
        }
    });
}

/// `dir/stem.ext`, or `stem-2.ext`, ... : an export never replaces a file.
fn free_name(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    let first = dir.join(format!("{stem}.{ext}"));
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|n| dir.join(format!("{stem}-{n}.{ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}
