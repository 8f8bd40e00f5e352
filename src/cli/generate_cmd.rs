//! `echoai generate` and `echoai eval`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::Args;

use crate::bounds::check;
use crate::corpus::{Corpus, Split};
use crate::device::DeviceChoice;
use crate::generate::music_terms::{KEY_FORMS, Scale, parse_pitch_range, parse_velocity_range};
use crate::generate::{Constraints, GenerateConfig, generate, splice};
use crate::midi::MAX_PIECE_SECONDS;
use crate::midi::{ExportOptions, Grid, export_midi, read_midi, write_midi};
use crate::model::WeightPrecision;
use crate::model::checkpoint::load_for_inference;
use crate::train::{MAX_BATCH, MAX_BATCH_EVENTS, MAX_SEQ, evaluate_stream};

use super::train_cmd::parse_device;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The checkpoint directory to sample from.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A MIDI file whose opening the model continues.
    #[arg(long)]
    pub primer: Option<PathBuf>,
    /// How much of the primer to use, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub primer_seconds: f64,
    /// Write the primer's own notes (unquantised, cut at --primer-seconds) before the new part,
    /// which then starts exactly at --primer-seconds (or the primer file's end, if sooner).
    #[arg(long)]
    pub keep_primer: bool,
    /// Seconds of new music.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// The model may not end the piece before this many seconds (0: whenever it likes).
    #[arg(long, default_value_t = 0.0)]
    pub min_seconds: f64,
    /// At most this many new events.
    #[arg(long, default_value_t = 20_000)]
    pub max_events: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely events up to this probability (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f64,
    /// Keep only the k most likely events (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// The same seed gives the same music.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How many pieces to generate at once (OUT-1.mid, OUT-2.mid, ...).
    #[arg(long, default_value_t = 1)]
    pub variations: usize,
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// Hold the weights as bfloat16 while sampling (CPU): faster, not bit-identical to f32.
    #[arg(long)]
    pub bf16: bool,
    /// Keep to a key: "C minor", "F# major", "Bb dorian", "A minor pentatonic", ... (a hard lock:
    /// no note outside the scale; --key-strength makes it a bias).
    #[arg(long, value_parser = parse_key)]
    pub key: Option<Scale>,
    /// Make --key soft: out-of-scale notes lose this much log-probability (0-50; 2.3 = 10x rarer).
    #[arg(long)]
    pub key_strength: Option<f64>,
    /// Lowest and highest note, e.g. C2..C6 (C4 is middle C) or 36..84.
    #[arg(long, value_parser = parse_pitch_range)]
    pub range: Option<(u8, u8)>,
    /// Target density in notes per second, steered as the piece is sampled.
    #[arg(long)]
    pub density: Option<f64>,
    /// Dynamics: lowest and highest velocity, e.g. 40..96.
    #[arg(long, value_parser = parse_velocity_range)]
    pub velocity: Option<(u8, u8)>,
    /// No new note while this many sound.
    #[arg(long)]
    pub max_polyphony: Option<usize>,
    /// End any note held this long, in seconds (0 = no limit).
    #[arg(long, default_value_t = crate::generate::constraints::DEFAULT_MAX_NOTE_SECONDS)]
    pub max_note_seconds: f64,
    /// Tempo written into the file, so a DAW's bars line up (the music's timing is unchanged).
    #[arg(long)]
    pub bpm: Option<f64>,
    /// Snap onsets and ends to a grid at --bpm: 1/4, 1/8, 1/16, 1/32, or triplets (1/8T).
    #[arg(long, value_parser = Grid::parse)]
    pub quantize: Option<Grid>,
    /// The piano track's name in the file.
    #[arg(long)]
    pub track_name: Option<String>,
    /// Where to write the MIDI file.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the output files if they already exist.
    #[arg(long)]
    pub overwrite: bool,
}

fn parse_key(text: &str) -> Result<Scale, String> {
    Scale::parse(text).map_err(|_| format!("unknown key `{text}`: use {KEY_FORMS}"))
}

impl GenerateArgs {
    /// The constraint flags as the engine's [`Constraints`].
    pub fn constraints(&self) -> Constraints {
        Constraints {
            key: self.key,
            key_strength: self.key_strength,
            range: self.range,
            density: self.density,
            velocity: self.velocity,
            max_polyphony: self.max_polyphony,
            max_note_seconds: (self.max_note_seconds != 0.0).then_some(self.max_note_seconds),
        }
    }
}

pub fn run_generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    // Everything the user typed is checked before the checkpoint is read.
    check(
        "--primer-seconds",
        args.primer_seconds,
        0.0..=MAX_PIECE_SECONDS,
    )
    .map_err(anyhow::Error::msg)?;
    check("--top-p", args.top_p, 0.0..=1.0).map_err(anyhow::Error::msg)?;
    if args.top_p == 0.0 {
        anyhow::bail!("--top-p is 0: it must be above 0 and at most 1 (1 turns it off)");
    }
    let export =
        (args.bpm.is_some() || args.quantize.is_some() || args.track_name.is_some()).then(|| {
            ExportOptions {
                bpm: args.bpm.unwrap_or(120.0),
                quantize: args.quantize,
                track_name: args.track_name.clone().unwrap_or_else(|| "Piano".into()),
            }
        });
    if let Some(e) = &export {
        e.validate()
            .map_err(|e| anyhow::anyhow!("invalid export settings: --{e}"))?;
    }
    if args.keep_primer && args.primer.is_none() {
        anyhow::bail!("--keep-primer needs --primer FILE");
    }
    let (primer, primer_length) = match &args.primer {
        Some(path) => {
            let full = read_midi(path)?;
            let length = args.primer_seconds.min(full.end_time());
            (Some(full.first_seconds(args.primer_seconds)), Some(length))
        }
        None => (None, None),
    };
    let config = GenerateConfig {
        temperature: args.temperature,
        top_k: (args.top_k > 0).then_some(args.top_k),
        top_p: (args.top_p < 1.0).then_some(args.top_p),
        max_seconds: args.seconds,
        min_seconds: args.min_seconds,
        max_events: args.max_events,
        seed: args.seed,
        variations: args.variations,
        precision: if args.bf16 {
            WeightPrecision::Bf16
        } else {
            WeightPrecision::F32
        },
        constraints: args.constraints(),
        primer_length: primer_length.filter(|_| args.keep_primer),
        open_with_note: false,
    };
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid settings: {e}"))?;
    let paths: Vec<PathBuf> = (0..config.variations)
        .map(|i| output_path(&args.out, i, config.variations))
        .collect();
    for path in &paths {
        crate::fsutil::check_output(path, args.overwrite).map_err(anyhow::Error::msg)?;
    }
    let device = args.device.open().map_err(anyhow::Error::msg)?;
    let (model, meta) = load_for_inference(&args.checkpoint, &device)?;
    eprintln!(
        "generating {} x {:.0} s with {} (step {})",
        args.variations, args.seconds, meta.model.kind, meta.step
    );
    let started = std::time::Instant::now();
    let takes = generate(
        &model,
        primer.as_ref(),
        &config,
        &AtomicBool::new(false),
        &mut |_| {},
    )?;
    let events: usize = takes.iter().map(|t| t.events.len()).sum();
    for (take, path) in takes.iter().zip(&paths) {
        let piece = match (&primer, args.keep_primer) {
            (Some(p), true) => splice(p, take),
            _ => take.performance.clone(),
        };
        match &export {
            Some(options) => export_midi(&piece, path, options)?,
            None => write_midi(&piece, path)?,
        }
        eprintln!(
            "{}: {} notes, {:.1} s{}",
            path.display(),
            piece.len(),
            piece.end_time(),
            if take.ended_by_model {
                " (the model ended it)"
            } else {
                ""
            }
        );
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{events} events in {secs:.1} s ({:.0} events/s)",
        events as f64 / secs
    );
    Ok(ExitCode::SUCCESS)
}

/// `out.mid` for one take; `out-1.mid`, `out-2.mid`, ... for several.
pub fn output_path(out: &Path, index: usize, count: usize) -> PathBuf {
    if count <= 1 {
        return out.to_path_buf();
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mid".into());
    out.with_file_name(format!("{stem}-{}.{ext}", index + 1))
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The checkpoint directory to evaluate.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Folder of MIDI files.
    #[arg(long)]
    pub data: PathBuf,
    /// Which split to score: validation, test or train.
    #[arg(long, default_value = "validation", value_parser = parse_split)]
    pub split: Split,
    /// Events per evaluation window.
    #[arg(long, default_value_t = 512)]
    pub seq: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_split(text: &str) -> Result<Split, String> {
    Split::parse(text)
        .ok_or_else(|| format!("unknown split `{text}`: use validation, test or train"))
}

pub fn run_eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    check("--seq", args.seq, 1..=MAX_SEQ).map_err(anyhow::Error::msg)?;
    check("--batch", args.batch, 1..=MAX_BATCH).map_err(anyhow::Error::msg)?;
    if args.seq * args.batch > MAX_BATCH_EVENTS {
        anyhow::bail!(
            "--seq x --batch is {} events: at most {MAX_BATCH_EVENTS} fit in one pass",
            args.seq * args.batch
        );
    }
    let device = args.device.open().map_err(anyhow::Error::msg)?;
    let (model, meta) = load_for_inference(&args.checkpoint, &device)?;
    let corpus = Corpus::load(&args.data, &|_, _| {})?;
    let stream = corpus.stream(args.split);
    let nll = evaluate_stream(&model, &stream, args.seq, args.batch)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the {} split of {} is empty",
            args.split.name(),
            args.data.display()
        )
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "checkpoint": args.checkpoint, "model": meta.model.kind.name(), "split": args.split.name(),
                "events": stream.len(), "nll": nll, "perplexity": nll.exp()
            })
        );
    } else {
        println!(
            "{} ({}, step {}) on the {} split ({} events): NLL {nll:.4} nats/event, perplexity {:.2}",
            args.checkpoint.display(),
            meta.model.kind,
            meta.step,
            args.split.name(),
            stream.len(),
            nll.exp()
        );
    }
    Ok(ExitCode::SUCCESS)
}
