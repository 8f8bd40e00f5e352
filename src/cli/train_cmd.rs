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
use crate::model::{ModelConfig, ModelKind};
use crate::train::{TrainConfig, TrainControl, TrainData, TrainEvent, format_duration, train};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Folder of MIDI files (a MAESTRO csv at its root gives the splits).
    #[arg(long)]
    pub data: PathBuf,
    /// Architecture: `lstm` or `lstm-attention`.
    #[arg(long, default_value = "lstm-attention", value_parser = parse_kind)]
    pub model: ModelKind,
    /// The checkpoint directory to write (and with --resume, to continue).
    #[arg(long)]
    pub out: PathBuf,
    /// Total optimizer steps.
    #[arg(long, default_value_t = 10_000)]
    pub steps: u64,
    /// Sequences per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Events per training sequence.
    #[arg(long, default_value_t = 512)]
    pub seq: usize,
    /// Peak learning rate (linear warm-up, then cosine decay to a tenth).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 200)]
    pub warmup: u64,
    #[arg(long, default_value_t = 256)]
    pub embed: usize,
    #[arg(long, default_value_t = 512)]
    pub hidden: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Attention window W (lstm-attention).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Attention heads (lstm-attention).
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f64,
    /// `auto`, `cpu`, `cuda` or `metal`.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// Continue the checkpoint in --out with its optimizer state, schedule and data RNG.
    #[arg(long)]
    pub resume: bool,
    /// Validate every N steps.
    #[arg(long, default_value_t = 200)]
    pub validate_every: u64,
    /// Write a checkpoint every N steps (and always at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Train without transposition and time-stretch augmentation.
    #[arg(long)]
    pub no_augment: bool,
    /// Print every event as a JSON line on stdout instead of a progress bar.
    #[arg(long)]
    pub json: bool,
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
    fn config(&self) -> TrainConfig {
        TrainConfig {
            model: ModelConfig {
                kind: self.model,
                embed: self.embed,
                hidden: self.hidden,
                layers: self.layers,
                dropout: self.dropout,
                window: self.window,
                heads: self.heads,
                ..ModelConfig::default()
            },
            steps: self.steps,
            batch: self.batch,
            seq_len: self.seq,
            lr: self.lr,
            warmup: self.warmup,
            validate_every: self.validate_every,
            checkpoint_every: self.checkpoint_every,
            augment: !self.no_augment,
            seed: self.seed,
            device: self.device,
            ..TrainConfig::default()
        }
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let config = args.config();
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
    ctrlc::set_handler(move || {
        if handler_control.stop.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting without a final checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nstopping: writing a checkpoint (Ctrl-C again to quit at once)");
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
                ..
            } => {
                bar.set_position(*step);
                let val = last_val.map_or("-".into(), |v| format!("{v:.3}"));
                bar.set_message(format!(
                    "loss {loss:.3} val {val} | {tokens_per_s:.0} tok/s | ETA {}",
                    format_duration(*eta_s)
                ));
                if !interactive && step % config.validate_every.max(1) == 0 {
                    eprintln!(
                        "step {step}: loss {loss:.4}, {tokens_per_s:.0} tokens/s, ETA {}",
                        format_duration(*eta_s)
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
