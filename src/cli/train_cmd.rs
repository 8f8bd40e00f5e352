//! `echoai train`: the training loop with a progress bar; Ctrl-C writes a checkpoint and exits.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::corpus::Corpus;
use crate::device::DeviceChoice;
use crate::memory::format_bytes;
use crate::model::ModelKind;
use crate::train::{
    TrainConfig, TrainControl, TrainData, TrainEvent, format_duration, saved_config, train,
};

/// Every setting of a run is optional on the command line: a fresh run fills in the defaults
/// shown, and `--resume` continues the saved run, changing only what is given explicitly.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Folder of MIDI files (a MAESTRO csv at its root gives the splits).
    #[arg(long)]
    pub data: PathBuf,
    /// Architecture: `lstm` or `lstm-attention` [default: lstm-attention].
    #[arg(long, value_parser = parse_kind)]
    pub model: Option<ModelKind>,
    /// The checkpoint directory to write: new or empty (with --resume, a checkpoint to continue).
    #[arg(long)]
    pub out: PathBuf,
    /// Total optimizer steps [default: 10000].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Sequences per step [default: 32].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Events per training sequence [default: 512].
    #[arg(long)]
    pub seq: Option<usize>,
    /// Peak learning rate (linear warm-up, then cosine decay to a tenth) [default: 0.001].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warm-up steps [default: 200].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Embedding size [default: 256].
    #[arg(long)]
    pub embed: Option<usize>,
    /// LSTM hidden size [default: 512].
    #[arg(long)]
    pub hidden: Option<usize>,
    /// LSTM layers [default: 2].
    #[arg(long)]
    pub layers: Option<usize>,
    /// Attention window W (lstm-attention) [default: 64].
    #[arg(long)]
    pub window: Option<usize>,
    /// Attention heads (lstm-attention) [default: 4].
    #[arg(long)]
    pub heads: Option<usize>,
    /// Dropout between layers [default: 0.1].
    #[arg(long)]
    pub dropout: Option<f64>,
    /// `auto`, `cpu`, `cuda` or `metal` [default: auto].
    #[arg(long, value_parser = parse_device)]
    pub device: Option<DeviceChoice>,
    /// On CUDA, let f32 products use TF32 tensor cores (PyTorch's default for cuDNN RNNs).
    #[arg(long)]
    pub tf32: bool,
    /// Continue the checkpoint in --out with its optimizer state, schedule and data RNG.
    #[arg(long)]
    pub resume: bool,
    /// Validate every N steps [default: 200].
    #[arg(long)]
    pub validate_every: Option<u64>,
    /// Write a checkpoint every N steps, and always at the end [default: 500].
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Write two samples (from silence, and continuing a validation primer) to
    /// <out>/samples/step-NNNNN-*.mid every N steps; 0: never [default: 500].
    #[arg(long)]
    pub sample_every: Option<u64>,
    /// Where samples are made: `inline` (training thread, between steps) or `job` (a thread
    /// sampling a copy of the weights while training goes on); `auto` is `job` [default: auto].
    #[arg(long, value_parser = parse_sampling)]
    pub sampling: Option<crate::train::samples::Sampling>,
    /// Seed of the weights and the data order [default: 1].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Train without transposition and time-stretch augmentation.
    #[arg(long)]
    pub no_augment: bool,
    /// Print every event as a JSON line on stdout instead of a progress bar.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_sampling(text: &str) -> Result<crate::train::samples::Sampling, String> {
    crate::train::samples::Sampling::parse(text)
        .ok_or_else(|| format!("unknown sampling `{text}`: use auto, inline or job"))
}

pub fn parse_kind(text: &str) -> Result<ModelKind, String> {
    ModelKind::parse(text)
        .ok_or_else(|| format!("unknown model `{text}`: use lstm or lstm-attention"))
}

pub fn parse_device(text: &str) -> Result<DeviceChoice, String> {
    DeviceChoice::parse(text)
        .ok_or_else(|| format!("unknown device `{text}`: use auto, cpu, cuda or metal"))
}

impl TrainArgs {
    /// `base` (the defaults, or the saved run) with every setting given on the command line.
    fn config_over(&self, base: TrainConfig) -> TrainConfig {
        let mut c = base;
        let m = &mut c.model;
        m.kind = self.model.unwrap_or(m.kind);
        m.embed = self.embed.unwrap_or(m.embed);
        m.hidden = self.hidden.unwrap_or(m.hidden);
        m.layers = self.layers.unwrap_or(m.layers);
        m.dropout = self.dropout.unwrap_or(m.dropout);
        m.window = self.window.unwrap_or(m.window);
        m.heads = self.heads.unwrap_or(m.heads);
        c.steps = self.steps.unwrap_or(c.steps);
        c.batch = self.batch.unwrap_or(c.batch);
        c.seq_len = self.seq.unwrap_or(c.seq_len);
        c.lr = self.lr.unwrap_or(c.lr);
        c.warmup = self.warmup.unwrap_or(c.warmup);
        c.validate_every = self.validate_every.unwrap_or(c.validate_every);
        c.checkpoint_every = self.checkpoint_every.unwrap_or(c.checkpoint_every);
        c.sample_every = self.sample_every.unwrap_or(c.sample_every);
        c.sampling = self.sampling.unwrap_or(c.sampling);
        c.seed = self.seed.unwrap_or(c.seed);
        c.device = self.device.unwrap_or(c.device);
        if self.no_augment {
            c.augment = false;
        }
        c
    }

    /// The run to start, or with `--resume` the saved one with the explicit changes.
    fn config(&self) -> anyhow::Result<TrainConfig> {
        let base = if self.resume {
            saved_config(&self.out)?
        } else {
            TrainConfig::default()
        };
        let config = self.config_over(base);
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid settings: {e}"))?;
        config.check_fits_in_memory().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    // Settings and the folder are checked before the corpus is read: a mistake should cost
    // a second, not a scan.
    let config = args.config()?;
    crate::device::set_tf32(args.tf32);
    if !args.data.is_dir() {
        anyhow::bail!(
            "cannot read the data folder {}: it is not a folder",
            args.data.display()
        );
    }
    crate::run_folder::check_out_folder(&args.out, args.resume).map_err(anyhow::Error::msg)?;
    let interactive = std::io::stderr().is_terminal() && !args.json;
    if !args.json {
        eprintln!("reading {} ...", args.data.display());
    }
    let corpus = Corpus::load(&args.data, &|_, _| {})?;
    if corpus.summary.files_ok == 0 {
        anyhow::bail!("no MIDI file in {} could be read", args.data.display());
    }
    let data = TrainData::from_corpus(&corpus);
    if !args.json {
        eprintln!(
            "{} files ({} failed), {} training and {} validation events",
            corpus.summary.files_ok,
            corpus.summary.files_failed,
            data.train.len(),
            data.validation.len()
        );
    }

    let control = TrainControl::default();
    let handler_control = control.clone();
    // Ctrl-C and SIGTERM alike: the first stops after a final checkpoint, the second stops
    // without one, a third quits at once, except while a checkpoint is being written: a save
    // is never cut short.
    let presses = std::sync::atomic::AtomicUsize::new(0);
    ctrlc::set_handler(move || match presses.fetch_add(1, Ordering::SeqCst) {
        0 => {
            handler_control.request_stop();
            eprintln!("\nstopping: writing a checkpoint (interrupt again to skip it)");
        }
        1 => {
            handler_control.request_abandon();
            eprintln!("\nstopping without a final checkpoint (a save in progress still completes)");
        }
        _ if handler_control.is_saving() => {
            eprintln!("\na checkpoint is being written: it will finish first");
        }
        _ => std::process::exit(130),
    })?;

    let bar = ProgressBar::new(config.steps);
    if interactive {
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let say = |line: String| {
        if interactive {
            bar.println(line);
        } else {
            eprintln!("{line}");
        }
    };
    let mut last_val: Option<f64> = None;
    let mut on_event = |event: TrainEvent| {
        if args.json {
            if let Ok(line) = serde_json::to_string(&event) {
                println!("{line}");
            }
            return;
        }
        match &event {
            TrainEvent::Started {
                start_step,
                total_steps,
                parameters,
                device,
                ..
            } => {
                bar.set_position(*start_step);
                bar.set_length(*total_steps);
                let line = format!(
                    "training {} ({parameters} parameters) on {device} from step {start_step} to {total_steps}",
                    config.model.kind
                );
                say(line);
            }
            TrainEvent::Step {
                step,
                loss,
                tokens_per_s,
                eta_s,
                peak_rss_bytes,
                ..
            } => {
                bar.set_position(*step);
                let val = last_val.map_or("-".into(), |v| format!("{v:.3}"));
                let memory = peak_rss_bytes
                    .map_or(String::new(), |b| format!(" | peak {}", format_bytes(b)));
                bar.set_message(format!(
                    "loss {loss:.3} val {val} | {tokens_per_s:.0} tok/s | ETA {}{memory}",
                    format_duration(*eta_s)
                ));
                if !interactive && step % config.validate_every.max(1) == 0 {
                    eprintln!(
                        "step {step}: loss {loss:.4}, {tokens_per_s:.0} tokens/s, ETA {}{}",
                        format_duration(*eta_s),
                        memory.replace(" | ", ", ")
                    );
                }
            }
            TrainEvent::Validation { step, nll } => {
                last_val = Some(*nll);
                say(format!("step {step}: validation NLL {nll:.4} nats/event"));
            }
            TrainEvent::Checkpoint { step, path } => {
                say(format!("step {step}: checkpoint {}", path.display()));
            }
            TrainEvent::Notice { message } => say(format!("note: {message}")),
            TrainEvent::Samples {
                step,
                files,
                seconds,
            } => say(format!(
                "step {step}: {} samples in {seconds:.1} s ({})",
                files.len(),
                files
                    .first()
                    .and_then(|f| f.parent())
                    .map_or(String::new(), |d| d.display().to_string())
            )),
            TrainEvent::Paused { .. } | TrainEvent::Resumed { .. } => {}
            TrainEvent::Finished {
                step,
                path,
                stopped_early,
            } => {
                bar.finish_and_clear();
                let how = if *stopped_early {
                    "stopped"
                } else {
                    "finished"
                };
                eprintln!("{how} at step {step}; checkpoint in {}", path.display());
            }
            TrainEvent::Failed { .. } => bar.abandon(),
        }
    };
    train(
        &data,
        &config,
        &args.out,
        args.resume,
        &control,
        &mut on_event,
    )?;
    Ok(ExitCode::SUCCESS)
}
