//! The training loop (DESIGN.md, "Training"): random crops of the training split with
//! augmentation on the fly, AdamW with linear warm-up and cosine decay, global-norm clipping,
//! validation NLL on fixed crops, checkpoints, pause / stop / checkpoint-now, and exact resume.
//!
//! It runs on whatever thread calls [`train`] and reports through a callback of [`TrainEvent`]s;
//! the studio forwards them over a channel, the CLI draws a progress bar.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::corpus::{Corpus, Split};
use crate::device::DeviceChoice;
use crate::model::checkpoint::{self, CheckpointMeta, DataSummary, ResumeState};
use crate::model::{ModelConfig, MusicModel};
use crate::optim::{AdamW, AdamWConfig};
use crate::rng::Rng;
use crate::tokenizer::{time_stretch, transpose};
use sample_job::SampleJob;

mod history;
pub mod runs;
mod sample_job;
pub mod samples;
pub use history::{Ema, MAX_POINTS, RunHistory, StepPoint, ValidationPoint};

/// Keeps the weight-initialisation stream apart from the data stream of the same seed.
const INIT_SEED_SALT: u64 = 0x1b17_5eed;

/// The token streams a run trains and validates on: each split's pieces joined end to end
/// (every piece is START ... END, so a crop that starts a piece starts with START).
#[derive(Clone, Debug, Default)]
pub struct TrainData {
    pub train: Vec<u16>,
    pub validation: Vec<u16>,
    pub summary: DataSummary,
}

impl TrainData {
    pub fn from_corpus(corpus: &Corpus) -> Self {
        let train = corpus.stream(Split::Train);
        let validation = corpus.stream(Split::Validation);
        TrainData {
            summary: DataSummary {
                root: corpus.root.display().to_string(),
                files: corpus.summary.files_ok,
                hours: corpus.summary.seconds / 3600.0,
                train_events: train.len(),
                validation_events: validation.len(),
            },
            train,
            validation,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub steps: u64,
    pub batch: usize,
    pub seq_len: usize,
    pub lr: f64,
    /// Linear warm-up steps (then cosine decay to `lr / 10`).
    pub warmup: u64,
    pub weight_decay: f64,
    pub clip: f64,
    pub validate_every: u64,
    /// At most this many fixed validation crops of `seq_len + 1` events.
    pub validation_crops: usize,
    pub checkpoint_every: u64,
    /// Write two samples (`train::samples`) every N steps; 0: only when asked.
    #[serde(default = "default_sample_every")]
    pub sample_every: u64,
    /// Where the samples are made (inline, or in a job on a copy of the weights).
    #[serde(default)]
    pub sampling: samples::Sampling,
    pub augment: bool,
    pub seed: u64,
    pub device: DeviceChoice,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: ModelConfig::default(),
            steps: 10_000,
            batch: 32,
            seq_len: 512,
            lr: 1e-3,
            warmup: 200,
            weight_decay: 0.01,
            clip: 3.0,
            validate_every: 200,
            validation_crops: 64,
            checkpoint_every: 500,
            sample_every: default_sample_every(),
            sampling: samples::Sampling::Auto,
            augment: true,
            seed: 1,
            device: DeviceChoice::Auto,
        }
    }
}

fn default_sample_every() -> u64 {
    500
}

/// Upper bounds on a run's settings (see [`TrainConfig::validate`]).
pub const MAX_STEPS: u64 = 100_000_000;
pub const MAX_BATCH: usize = 4096;
pub const MAX_SEQ: usize = 65_536;
/// Events in one batch (`batch x seq`): about 3 GB of activations at the default model size.
pub const MAX_BATCH_EVENTS: usize = 1 << 20;
pub const MAX_VALIDATION_CROPS: usize = 100_000;
/// Far above any rate that trains (1e-3 is the default); high enough to test divergence.
pub const MAX_LR: f64 = 10.0;

impl TrainConfig {
    /// Explains the first setting out of range, naming it as the command line does.
    pub fn validate(&self) -> Result<(), String> {
        use crate::bounds::{check, check_positive};
        self.model.validate()?;
        check("steps", self.steps, 1..=MAX_STEPS)?;
        check("batch", self.batch, 1..=MAX_BATCH)?;
        check("seq", self.seq_len, 2..=MAX_SEQ)?;
        if self.batch * self.seq_len > MAX_BATCH_EVENTS {
            return Err(format!(
                "batch x seq is {} events: at most {MAX_BATCH_EVENTS} fit in one step",
                self.batch * self.seq_len
            ));
        }
        check_positive("lr", self.lr, MAX_LR)?;
        check("warmup", self.warmup, 0..=MAX_STEPS)?;
        check("weight-decay", self.weight_decay, 0.0..=1.0)?;
        check_positive("clip", self.clip, 1e6)?;
        check("validate-every", self.validate_every, 0..=MAX_STEPS)?;
        check("checkpoint-every", self.checkpoint_every, 0..=MAX_STEPS)?;
        check("sample-every", self.sample_every, 0..=MAX_STEPS)?;
        check(
            "validation crops",
            self.validation_crops,
            0..=MAX_VALIDATION_CROPS,
        )?;
        Ok(())
    }

    /// About how much memory a step needs: activations kept for the backward pass, their
    /// gradients, and four copies of the weights (weights, gradients, two AdamW moments).
    pub fn estimated_memory_bytes(&self) -> u64 {
        let m = &self.model;
        let (h, v) = (m.hidden as u64, m.vocab_size as u64);
        let layers: u64 = (0..m.layers as u64)
            .map(|l| 12 * h + if l == 0 { 0 } else { h })
            .sum();
        let attention = match m.kind {
            crate::model::ModelKind::Lstm => 0,
            crate::model::ModelKind::LstmAttention => 8 * h + (m.heads * m.window) as u64,
        };
        let per_token_floats = layers + attention + 2 * v;
        let tokens = (self.batch * self.seq_len) as u64;
        4 * (tokens.saturating_mul(per_token_floats) + 4 * m.parameter_count() as u64)
    }

    /// Refuses a run that cannot fit in this machine's memory, before it starts.
    pub fn check_fits_in_memory(&self) -> Result<(), String> {
        let (Some(total), need) = (
            crate::memory::total_memory_bytes(),
            self.estimated_memory_bytes(),
        ) else {
            return Ok(());
        };
        if need > total {
            return Err(format!(
                "this run needs about {} of memory (batch {} x seq {} at hidden {}), and this machine has {}: lower --batch, --seq or --hidden",
                crate::memory::format_bytes(need),
                self.batch,
                self.seq_len,
                self.model.hidden,
                crate::memory::format_bytes(total)
            ));
        }
        Ok(())
    }

    /// The learning rate before update number `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        let warmup = self.warmup.min(self.steps.saturating_sub(1));
        if step < warmup {
            return self.lr * (step + 1) as f64 / warmup as f64;
        }
        let span = (self.steps - warmup).max(1) as f64;
        let progress = ((step - warmup) as f64 / span).min(1.0);
        let floor = self.lr * 0.1;
        floor + (self.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// What a run reports, in order: `Started`, then `Notice`s, `Step`s with `Validation`s and
/// `Checkpoint`s among them, then exactly one of `Finished` or `Failed`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    Started {
        start_step: u64,
        total_steps: u64,
        parameters: usize,
        device: String,
        train_events: usize,
        validation_events: usize,
    },
    Step {
        step: u64,
        loss: f64,
        lr: f64,
        tokens_per_s: f64,
        eta_s: f64,
        /// The process's peak resident memory so far, where the system reports it.
        peak_rss_bytes: Option<u64>,
        /// The global gradient norm before clipping.
        grad_norm: f64,
        /// Seconds of training so far (pauses excluded; carried across resumes).
        wall_s: f64,
    },
    Validation {
        step: u64,
        nll: f64,
    },
    /// Something the user should know about the run's folder or settings: an earlier run that
    /// died, a checkpoint recovered from an interrupted save, settings a resume changed.
    Notice {
        message: String,
    },
    Paused {
        step: u64,
    },
    Resumed {
        step: u64,
    },
    Checkpoint {
        step: u64,
        path: PathBuf,
    },
    /// Samples of the model at `step` were written (`train::samples`).
    Samples {
        step: u64,
        files: Vec<PathBuf>,
        /// How long making them took (training was held meanwhile).
        seconds: f64,
    },
    Finished {
        step: u64,
        path: PathBuf,
        stopped_early: bool,
    },
    Failed {
        reason: String,
    },
}

/// Shared flags the UI or a signal handler sets while a run is going.
#[derive(Clone, Debug, Default)]
pub struct TrainControl {
    pub pause: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
    pub checkpoint_now: Arc<AtomicBool>,
    /// Stop at once, without the final checkpoint (a second Ctrl-C). A save in progress still
    /// completes: nothing ever interrupts one.
    pub abandon: Arc<AtomicBool>,
    /// Set by the run while it writes a checkpoint, so a signal handler knows not to exit.
    pub saving: Arc<AtomicBool>,
    /// Make samples after the current step ("Sample now").
    pub sample_now: Arc<AtomicBool>,
}

impl TrainControl {
    pub fn request_abandon(&self) {
        self.abandon.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn is_saving(&self) -> bool {
        self.saving.load(Ordering::SeqCst)
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn set_paused(&self, paused: bool) {
        self.pause.store(paused, Ordering::SeqCst);
    }

    pub fn request_checkpoint(&self) {
        self.checkpoint_now.store(true, Ordering::SeqCst);
    }

    pub fn request_samples(&self) {
        self.sample_now.store(true, Ordering::SeqCst);
    }
}

/// `trainer.json`: everything beyond the weights and moments that an exact resume needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    pub config: TrainConfig,
    pub step: u64,
    pub rng: Rng,
    /// The per-step curves (thinned for long runs) and every validation.
    #[serde(default)]
    pub history: RunHistory,
    pub elapsed_s: f64,
    /// The device the run last trained on (`cpu`, `cuda`, `metal`).
    #[serde(default)]
    pub device: String,
    /// Histories written before `history` existed: (step, loss) for every step and (step, NLL);
    /// read once into `history`, never written.
    #[serde(default, skip_serializing)]
    losses: Vec<(u64, f64)>,
    #[serde(default, skip_serializing)]
    validations: Vec<(u64, f64)>,
    /// The last few losses, for the checkpoint's `train_loss`.
    #[serde(skip)]
    recent_losses: std::collections::VecDeque<f64>,
}

/// `train_loss` in `config.json` is the mean of this many last steps.
const RECENT_LOSSES: usize = 50;

impl TrainerState {
    fn new(config: TrainConfig) -> Self {
        TrainerState {
            rng: Rng::new(config.seed),
            config,
            step: 0,
            history: RunHistory::default(),
            elapsed_s: 0.0,
            device: String::new(),
            losses: Vec::new(),
            validations: Vec::new(),
            recent_losses: Default::default(),
        }
    }

    /// Moves an old file's full loss lists into the compact history.
    fn upgrade_history(&mut self) {
        let (losses, validations) = (
            std::mem::take(&mut self.losses),
            std::mem::take(&mut self.validations),
        );
        if losses.is_empty() && validations.is_empty() {
            return;
        }
        let per_step = self.elapsed_s / self.step.max(1) as f64;
        for (step, loss) in losses {
            self.history.push_step(StepPoint {
                step,
                loss: loss as f32,
                lr: self.config.lr_at(step.saturating_sub(1)) as f32,
                // Not recorded by those versions (0: unknown; JSON has no NaN).
                grad_norm: 0.0,
                tokens_per_s: 0.0,
                wall_s: (per_step * step as f64) as f32,
            });
        }
        for (step, nll) in validations {
            self.history.push_validation(ValidationPoint {
                step,
                nll,
                wall_s: per_step * step as f64,
            });
        }
    }

    fn record_step(&mut self, point: StepPoint, loss: f64) {
        self.recent_losses.push_back(loss);
        if self.recent_losses.len() > RECENT_LOSSES {
            self.recent_losses.pop_front();
        }
        self.history.push_step(point);
    }

    /// The mean of the last steps' losses (from the history after a resume).
    fn recent_loss(&self) -> Option<f64> {
        let recent: Vec<f64> = if self.recent_losses.is_empty() {
            let points = self.history.points.iter().rev().take(RECENT_LOSSES);
            points.map(|p| p.loss as f64).collect()
        } else {
            self.recent_losses.iter().copied().collect()
        };
        (!recent.is_empty()).then(|| recent.iter().sum::<f64>() / recent.len() as f64)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(
        "training diverged at step {step} (the loss or an update became {loss}); it stopped, and the last good checkpoint ({kept}) was kept"
    )]
    NonFinite { step: u64, loss: f64, kept: String },
    #[error("interrupted twice: stopped without a final checkpoint (last checkpoint: {kept})")]
    Abandoned { kept: String },
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// The result of a run that did not fail.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub checkpoint: PathBuf,
    pub step: u64,
    pub stopped_early: bool,
    pub last_validation: Option<f64>,
}

/// Trains (or with `resume`, continues) a model, writing checkpoints to `out`. Every outcome is
/// also reported as a final `Finished` or `Failed` event.
pub fn train(
    data: &TrainData,
    config: &TrainConfig,
    out: &Path,
    resume: bool,
    control: &TrainControl,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainOutcome, TrainError> {
    let result = run(data, config, out, resume, control, on_event);
    // Any orderly end, success or a reported error: only a run that died keeps its marker.
    crate::run_folder::mark_ended(out);
    if let Err(e) = &result {
        on_event(TrainEvent::Failed {
            reason: e.to_string(),
        });
    }
    result
}

struct Session {
    model: MusicModel,
    varmap: VarMap,
    optimizer: AdamW,
    state: TrainerState,
    device: Device,
    last_good: Option<PathBuf>,
}

fn run(
    data: &TrainData,
    config: &TrainConfig,
    out: &Path,
    resume: bool,
    control: &TrainControl,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainOutcome, TrainError> {
    let unfinished = crate::run_folder::unfinished_run(out);
    let (mut s, changes) = open_session(config, out, resume)?;
    let cfg = s.state.config.clone();
    let need = cfg.seq_len + 1;
    if data.train.len() <= need {
        return Err(TrainError::Setup(format!(
            "the training split has {} events, fewer than one crop of {need}: use a smaller --seq or more data",
            data.train.len()
        )));
    }
    let val_crops = validation_crops(&data.validation, need, cfg.validation_crops);
    let starts = piece_starts(&data.train);
    let primer = samples::fixed_primer(
        if data.validation.is_empty() {
            &data.train
        } else {
            &data.validation
        },
        samples::PRIMER_SECONDS,
    );
    let mut sample_job: Option<SampleJob> = None;
    on_event(TrainEvent::Started {
        start_step: s.state.step,
        total_steps: cfg.steps,
        parameters: s.varmap.all_vars().iter().map(|v| v.elem_count()).sum(),
        device: crate::device::describe_with_kernels(&s.device),
        train_events: data.train.len(),
        validation_events: data.validation.len(),
    });
    crate::run_folder::mark_running(out, s.state.step)
        .map_err(|e| TrainError::Setup(format!("cannot write to {}: {e}", out.display())))?;
    if let Some(u) = unfinished {
        on_event(TrainEvent::Notice {
            message: u.describe(),
        });
    }
    for change in changes {
        on_event(TrainEvent::Notice {
            message: format!("resuming with a change: {change}"),
        });
    }

    let tokens_per_step = (cfg.batch * cfg.seq_len) as f64;
    let mut step_secs: Option<f64> = None;
    let mut stopped_early = false;
    while s.state.step < cfg.steps {
        if control.abandon.load(Ordering::SeqCst) {
            return Err(TrainError::Abandoned {
                kept: kept_checkpoint(&s),
            });
        }
        if control.stop.load(Ordering::SeqCst) {
            stopped_early = true;
            break;
        }
        if control.pause.load(Ordering::SeqCst) {
            on_event(TrainEvent::Paused { step: s.state.step });
            while control.pause.load(Ordering::SeqCst) && !control.stop.load(Ordering::SeqCst) {
                if control.checkpoint_now.swap(false, Ordering::SeqCst) {
                    save(&mut s, data, out, control, on_event)?;
                }
                if control.sample_now.swap(false, Ordering::SeqCst) {
                    make_samples(&s, out, primer.as_ref(), on_event);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            on_event(TrainEvent::Resumed { step: s.state.step });
            continue;
        }
        let t0 = Instant::now();
        let (inputs, targets) = sample_batch(
            &data.train,
            &starts,
            cfg.batch,
            need,
            cfg.augment,
            &mut s.state.rng,
        );
        let inputs = Tensor::from_vec(inputs, (cfg.batch, cfg.seq_len), &s.device)?;
        let targets = Tensor::from_vec(targets, cfg.batch * cfg.seq_len, &s.device)?;
        let objective = s
            .model
            .training_loss(&inputs, &targets, Some(&mut s.state.rng))?;
        let loss_value = objective.loss().to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let step = s.state.step;
        if !loss_value.is_finite() {
            return Err(non_finite(step + 1, loss_value, &s));
        }
        let grads = objective.gradients()?;
        let lr = cfg.lr_at(step);
        let norm = s.optimizer.step(&grads, lr, cfg.clip)?;
        if !norm.is_finite() {
            return Err(non_finite(step + 1, norm, &s));
        }
        s.state.step += 1;
        let secs = t0.elapsed().as_secs_f64();
        s.state.elapsed_s += secs;
        let avg = step_secs.map_or(secs, |a| 0.9 * a + 0.1 * secs);
        step_secs = Some(avg);
        s.state.record_step(
            StepPoint {
                step: s.state.step,
                loss: loss_value as f32,
                lr: lr as f32,
                grad_norm: norm as f32,
                tokens_per_s: finite_or_zero(tokens_per_step / secs) as f32,
                wall_s: s.state.elapsed_s as f32,
            },
            loss_value,
        );
        on_event(TrainEvent::Step {
            step: s.state.step,
            loss: loss_value,
            lr,
            tokens_per_s: tokens_per_step / avg,
            eta_s: avg * (cfg.steps - s.state.step) as f64,
            peak_rss_bytes: crate::memory::peak_resident_bytes(),
            grad_norm: norm,
            wall_s: s.state.elapsed_s,
        });
        let last = s.state.step == cfg.steps;
        if cfg.validate_every > 0
            && (s.state.step % cfg.validate_every == 0 || last)
            && let Some(nll) = evaluate_crops(&s.model, &val_crops, cfg.batch, &s.device)?
        {
            s.state.history.push_validation(ValidationPoint {
                step: s.state.step,
                nll,
                wall_s: s.state.elapsed_s,
            });
            on_event(TrainEvent::Validation {
                step: s.state.step,
                nll,
            });
        }
        if let Some(job) = sample_job.take_if(|j| j.is_finished()) {
            finish_sample_job(job, out, on_event);
        }
        let sample_due = cfg.sample_every > 0 && s.state.step % cfg.sample_every == 0;
        if sample_due || control.sample_now.swap(false, Ordering::SeqCst) {
            if last && let Some(job) = sample_job.take() {
                // The final weights are always sampled: wait for the job in flight first.
                finish_sample_job(job, out, on_event);
            }
            if !cfg.sampling.in_job() {
                make_samples(&s, out, primer.as_ref(), on_event);
            } else if let Some(job) = &sample_job {
                on_event(TrainEvent::Notice {
                    message: format!(
                        "no samples at step {}: those of step {} are still being made",
                        s.state.step,
                        job.step()
                    ),
                });
            } else {
                match SampleJob::start(&s.varmap, &cfg.model, s.state.step, primer.clone()) {
                    Ok(job) => sample_job = Some(job),
                    Err(message) => on_event(TrainEvent::Notice {
                        message: format!("no samples at step {}: {message}", s.state.step),
                    }),
                }
            }
        }
        let periodic = cfg.checkpoint_every > 0 && s.state.step % cfg.checkpoint_every == 0;
        if (periodic || control.checkpoint_now.swap(false, Ordering::SeqCst)) && !last {
            save(&mut s, data, out, control, on_event)?;
        }
    }
    // The last samples belong in the final checkpoint.
    if let Some(job) = sample_job.take() {
        finish_sample_job(job, out, on_event);
    }
    if control.abandon.load(Ordering::SeqCst) {
        return Err(TrainError::Abandoned {
            kept: kept_checkpoint(&s),
        });
    }
    save(&mut s, data, out, control, on_event)?;
    let outcome = TrainOutcome {
        checkpoint: out.to_path_buf(),
        step: s.state.step,
        stopped_early,
        last_validation: s.state.history.validations.last().map(|v| v.nll),
    };
    on_event(TrainEvent::Finished {
        step: outcome.step,
        path: outcome.checkpoint.clone(),
        stopped_early,
    });
    Ok(outcome)
}

/// Writes the samples of the current weights; a failure is reported and training goes on (a
/// full disk shows at the next checkpoint, which does stop the run).
fn make_samples(
    s: &Session,
    out: &Path,
    primer: Option<&crate::performance::Performance>,
    on_event: &mut dyn FnMut(TrainEvent),
) {
    let t0 = Instant::now();
    match samples::write_samples(&s.model, out, s.state.step, primer) {
        Ok(files) => on_event(TrainEvent::Samples {
            step: s.state.step,
            files,
            seconds: t0.elapsed().as_secs_f64(),
        }),
        Err(message) => on_event(TrainEvent::Notice {
            message: format!("no samples at step {}: {message}", s.state.step),
        }),
    }
}

/// Waits for a sampling job and writes its samples (on the training thread, between steps).
fn finish_sample_job(job: SampleJob, out: &Path, on_event: &mut dyn FnMut(TrainEvent)) {
    let (step, seconds, made) = job.join();
    match made.and_then(|takes| samples::write_sample_files(out, step, &takes)) {
        Ok(files) => on_event(TrainEvent::Samples {
            step,
            files,
            seconds,
        }),
        Err(message) => on_event(TrainEvent::Notice {
            message: format!("no samples at step {step}: {message}"),
        }),
    }
}

/// JSON has no NaN or infinity (a zero-length step would give one).
fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

fn non_finite(step: u64, loss: f64, s: &Session) -> TrainError {
    TrainError::NonFinite {
        step,
        loss,
        kept: kept_checkpoint(s),
    }
}

fn kept_checkpoint(s: &Session) -> String {
    s.last_good
        .as_ref()
        .map_or("none was written yet".into(), |p| p.display().to_string())
}

/// The settings a checkpoint in `out` was trained with (what `--resume` continues).
pub fn saved_config(out: &Path) -> Result<TrainConfig, TrainError> {
    let meta = checkpoint::read_meta(out)?;
    Ok(read_trainer_state(out, &meta)?.config)
}

/// `trainer.json`, checked against `config.json` and range-checked: a hand-edited file must
/// not size a loop or an allocation.
fn read_trainer_state(out: &Path, meta: &CheckpointMeta) -> Result<TrainerState, TrainError> {
    let json = checkpoint::read_trainer_json(out)?;
    let bad = |what: String| TrainError::Setup(format!("{}: trainer.json: {what}", out.display()));
    let mut state: TrainerState = serde_json::from_str(&json).map_err(|e| bad(e.to_string()))?;
    state.upgrade_history();
    state.config.validate().map_err(bad)?;
    if state.config.model != meta.model {
        return Err(bad("its model differs from config.json's".into()));
    }
    if state.step > state.config.steps || state.step != meta.step {
        return Err(bad(format!(
            "step {} does not fit config.json's step {} and the run's {} steps",
            state.step, meta.step, state.config.steps
        )));
    }
    if !state.rng.is_usable() {
        return Err(bad("the random generator's state is all zeros".into()));
    }
    if !(state.elapsed_s.is_finite() && state.elapsed_s >= 0.0) {
        return Err(bad(format!("elapsed_s is {}", state.elapsed_s)));
    }
    state.history.check(state.step).map_err(bad)?;
    Ok(state)
}

/// The settings in which `wanted` differs from `saved`, as `name: old -> new`.
pub fn config_changes(saved: &TrainConfig, wanted: &TrainConfig) -> Vec<(String, String)> {
    fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let as_fields = |c: &TrainConfig| {
        let mut fields = Vec::new();
        if let Ok(v) = serde_json::to_value(c) {
            flatten("", &v, &mut fields);
        }
        fields
    };
    let before = as_fields(saved);
    as_fields(wanted)
        .into_iter()
        .filter_map(|(key, new)| {
            let old = before.iter().find(|(k, _)| *k == key)?;
            (old.1 != new).then(|| (key.clone(), format!("{key}: {} -> {new}", old.1)))
        })
        .collect()
}

fn open_session(
    config: &TrainConfig,
    out: &Path,
    resume: bool,
) -> Result<(Session, Vec<String>), TrainError> {
    config.validate().map_err(TrainError::Setup)?;
    config.check_fits_in_memory().map_err(TrainError::Setup)?;
    crate::run_folder::check_out_folder(out, resume).map_err(TrainError::Setup)?;
    let device = config.device.open().map_err(TrainError::Setup)?;
    let mut changes = Vec::new();
    let (model_config, state) = if resume {
        let meta = checkpoint::read_meta(out)?;
        let mut state = read_trainer_state(out, &meta)?;
        for (key, change) in config_changes(&state.config, config) {
            // The architecture is the checkpoint's; dropout is only a training setting.
            if key.starts_with("model.") && key != "model.dropout" {
                return Err(TrainError::Setup(format!(
                    "cannot resume {} with another model ({change}): the architecture is fixed by the checkpoint",
                    out.display()
                )));
            }
            changes.push(change);
        }
        if config.steps < state.step {
            return Err(TrainError::Setup(format!(
                "steps is {}, but the checkpoint in {} has already trained {} steps",
                config.steps,
                out.display(),
                state.step
            )));
        }
        state.config = config.clone();
        state.config.model = meta.model.clone();
        state.config.model.dropout = config.model.dropout;
        (state.config.model.clone(), state)
    } else {
        (config.model.clone(), TrainerState::new(config.clone()))
    };
    let mut state = state;
    state.device = crate::device::describe(&device).into();
    let varmap = VarMap::new();
    let model = MusicModel::new(
        &model_config,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    crate::model::init::initialize(&varmap, &model_config, state.config.seed ^ INIT_SEED_SALT)?;
    let named = varmap
        .data()
        .lock()
        .map_err(|_| TrainError::Setup("poisoned variable map".into()))?
        .clone();
    let mut optimizer = AdamW::new(
        named,
        AdamWConfig {
            weight_decay: state.config.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let mut last_good = None;
    if resume {
        checkpoint::load_into_varmap(out, &model_config, &varmap)?;
        let moments = checkpoint::load_optimizer_moments(out, &device)?;
        optimizer.load_state(&moments, state.step)?;
        last_good = Some(out.to_path_buf());
    }
    Ok((
        Session {
            model,
            varmap,
            optimizer,
            state,
            device,
            last_good,
        },
        changes,
    ))
}

/// `batch` crops of `need` events: inputs are the first `need - 1`, targets the last `need - 1`.
pub fn sample_batch(
    stream: &[u16],
    piece_starts: &[usize],
    batch: usize,
    need: usize,
    augment: bool,
    rng: &mut Rng,
) -> (Vec<u32>, Vec<u32>) {
    let mut inputs = Vec::with_capacity(batch * (need - 1));
    let mut targets = Vec::with_capacity(batch * (need - 1));
    for _ in 0..batch {
        let crop = crop(stream, piece_starts, need, augment, rng);
        inputs.extend(crop[..need - 1].iter().map(|&id| id as u32));
        targets.extend(crop[1..].iter().map(|&id| id as u32));
    }
    (inputs, targets)
}

/// The positions of START in a stream: where pieces begin.
pub fn piece_starts(stream: &[u16]) -> Vec<usize> {
    stream
        .iter()
        .enumerate()
        .filter(|&(_, &id)| id == crate::tokenizer::START)
        .map(|(i, _)| i)
        .collect()
}

/// One crop in this many begins exactly at a piece's START. Generation from silence starts with
/// START and a zero state; crops that begin mid-piece never show the model that situation, and a
/// model trained only on them did not learn that a piece opens with a VELOCITY event.
const PIECE_START_CROP_ONE_IN: usize = 8;

/// A random start for a window of `len` events: usually anywhere, sometimes at a piece start.
fn crop_start(stream: &[u16], piece_starts: &[usize], len: usize, rng: &mut Rng) -> usize {
    let last = stream.len() - len;
    let at_piece = rng.below(PIECE_START_CROP_ONE_IN) == 0;
    let anywhere = rng.below(last + 1);
    let fitting = piece_starts.partition_point(|&p| p <= last);
    if at_piece && fitting > 0 {
        piece_starts[rng.below(fitting)]
    } else {
        anywhere
    }
}

fn crop(
    stream: &[u16],
    piece_starts: &[usize],
    need: usize,
    augment: bool,
    rng: &mut Rng,
) -> Vec<u16> {
    if !augment {
        let start = crop_start(stream, piece_starts, need, rng);
        return stream[start..start + need].to_vec();
    }
    let semitones = rng.range_i32(-3, 3);
    let stretch = 0.95 + 0.1 * rng.next_f64();
    // A slightly longer window, because stretching can drop time shifts.
    let len = (need + need / 4 + 8).min(stream.len());
    let start = crop_start(stream, piece_starts, len, rng);
    let window = &stream[start..start + len];
    // A transposition that would leave the keyboard is skipped, not the crop.
    let moved = transpose(window, semitones).unwrap_or_else(|| window.to_vec());
    let stretched = time_stretch(&moved, stretch);
    if stretched.len() >= need {
        stretched[..need].to_vec()
    } else {
        window[..need].to_vec()
    }
}

/// Evenly spaced, non-overlapping crops of `need` events (the same every time).
pub fn validation_crops(stream: &[u16], need: usize, max: usize) -> Vec<Vec<u16>> {
    let available = stream.len() / need;
    let count = available.min(max);
    if count == 0 {
        return Vec::new();
    }
    let stride = available / count;
    (0..count)
        .map(|i| stream[i * stride * need..(i * stride + 1) * need].to_vec())
        .collect()
}

/// Mean negative log-likelihood in nats per predicted event over `crops`.
pub fn evaluate_crops(
    model: &MusicModel,
    crops: &[Vec<u16>],
    batch: usize,
    device: &Device,
) -> candle_core::Result<Option<f64>> {
    let mut total = 0.0;
    let mut count = 0usize;
    for chunk in crops.chunks(batch.max(1)) {
        let len = chunk[0].len();
        let b = chunk.len();
        let inputs: Vec<u32> = chunk
            .iter()
            .flat_map(|c| c[..len - 1].iter().map(|&x| x as u32))
            .collect();
        let targets: Vec<u32> = chunk
            .iter()
            .flat_map(|c| c[1..].iter().map(|&x| x as u32))
            .collect();
        let inputs = Tensor::from_vec(inputs, (b, len - 1), device)?;
        let targets = Tensor::from_vec(targets, b * (len - 1), device)?;
        let loss = model
            .loss(&inputs, &targets, None)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        total += loss * (b * (len - 1)) as f64;
        count += b * (len - 1);
    }
    Ok((count > 0).then(|| total / count as f64))
}

/// NLL of a whole token stream in windows of `seq_len + 1` (the last one shorter).
pub fn evaluate_stream(
    model: &MusicModel,
    stream: &[u16],
    seq_len: usize,
    batch: usize,
) -> candle_core::Result<Option<f64>> {
    let need = seq_len + 1;
    let mut windows: Vec<Vec<u16>> = Vec::new();
    let mut start = 0;
    while start + 1 < stream.len() {
        let end = (start + need).min(stream.len());
        windows.push(stream[start..end].to_vec());
        start += seq_len;
    }
    // Windows of the full length batch together; the shorter tail runs alone.
    let (full, tail): (Vec<_>, Vec<_>) = windows.into_iter().partition(|w| w.len() == need);
    let mut total = 0.0;
    let mut count = 0usize;
    for group in [full, tail] {
        let n: usize = group.iter().map(|w| w.len() - 1).sum();
        if let Some(nll) = evaluate_crops(model, &group, batch, model.device())? {
            total += nll * n as f64;
            count += n;
        }
    }
    Ok((count > 0).then(|| total / count as f64))
}

fn save(
    s: &mut Session,
    data: &TrainData,
    out: &Path,
    control: &TrainControl,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<(), TrainError> {
    control.saving.store(true, Ordering::SeqCst);
    let result = write_checkpoint(s, data, out);
    control.saving.store(false, Ordering::SeqCst);
    result?;
    s.last_good = Some(out.to_path_buf());
    on_event(TrainEvent::Checkpoint {
        step: s.state.step,
        path: out.to_path_buf(),
    });
    Ok(())
}

fn write_checkpoint(s: &Session, data: &TrainData, out: &Path) -> Result<(), TrainError> {
    let mut meta = CheckpointMeta::new(s.model.config.clone(), data.summary.clone());
    meta.step = s.state.step;
    meta.validation_nll = s.state.history.validations.last().map(|v| v.nll);
    meta.train_loss = s.state.recent_loss();
    let trainer_json = serde_json::to_string(&s.state)
        .map_err(|e| TrainError::Setup(format!("cannot serialise the trainer state: {e}")))?;
    checkpoint::save(
        out,
        &meta,
        &checkpoint::varmap_tensors(&s.varmap),
        Some(ResumeState {
            optimizer: s.optimizer.state_tensors(),
            trainer_json: &trainer_json,
        }),
    )?;
    Ok(())
}

/// `1m05s`, `2h03m`: for ETAs and elapsed times.
pub fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{END, START};

    #[test]
    fn some_crops_begin_exactly_at_a_piece_start() {
        // Pieces of 100 events: START, 98 notes, END.
        let mut stream = Vec::new();
        for _ in 0..50 {
            stream.push(START);
            stream.extend(std::iter::repeat_n(60u16, 98));
            stream.push(END);
        }
        let mut rng = Rng::new(4);
        let (inputs, _) = sample_batch(&stream, &piece_starts(&stream), 4000, 33, false, &mut rng);
        let at_start = inputs.chunks(32).filter(|c| c[0] == START as u32).count();
        // One in eight by design, plus the 1 % that land on a START by chance.
        assert!((430..680).contains(&at_start), "{at_start} of 4000");
    }

    #[test]
    fn the_schedule_warms_up_then_decays_to_a_tenth() {
        let c = TrainConfig {
            steps: 1000,
            warmup: 100,
            lr: 1e-3,
            ..TrainConfig::default()
        };
        assert!((c.lr_at(0) - 1e-5).abs() < 1e-12);
        assert!((c.lr_at(99) - 1e-3).abs() < 1e-12);
        assert!((c.lr_at(999) - 1e-4).abs() < 1e-6);
        assert!(c.lr_at(500) < c.lr_at(200));
    }
}
