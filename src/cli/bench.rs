//! `echoai bench ...`: speed measurements printed as a table (and JSON with `--json`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Subcommand;
use rayon::prelude::*;

use super::bench_model;
use crate::corpus::scan_midi_files;
use crate::midi::parse_midi;
use crate::tokenizer::encode_piece;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Parse and tokenize a folder of MIDI files (default: the demo corpus); reports events/s and files/s.
    Corpus {
        /// The folder (default: assets/corpus).
        dir: Option<PathBuf>,
        /// How many timed passes; the median is reported.
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
    /// Training tokens/s of the reference model (fused LSTM) against candle_nn's LSTM, and the SGEMM ceiling.
    Train {
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq: usize,
        #[arg(long, default_value_t = 256)]
        embed: usize,
        #[arg(long, default_value_t = 512)]
        hidden: usize,
        /// Timed steps per model (the median is reported).
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Skip the (slow) candle_nn baseline.
        #[arg(long)]
        no_baseline: bool,
        /// Also time the composed reference LSTM.
        #[arg(long)]
        composed: bool,
        /// Also time the lstm-attention model at the same sizes, and the share of its step in attention.
        #[arg(long)]
        attention: bool,
        /// `cpu` or `cuda` (a `--features cuda` build) [default: cpu].
        #[arg(long, value_parser = super::train_cmd::parse_device)]
        device: Option<crate::device::DeviceChoice>,
        /// On CUDA, let f32 products use TF32 tensor cores.
        #[arg(long)]
        tf32: bool,
        /// Also print each row's forward, backward and optimizer milliseconds (synchronising
        /// between them), and the CPU thread team's barrier waits per step.
        #[arg(long)]
        phases: bool,
    },
    /// The built-in synth's real-time factor on a MAESTRO sample (about 2.8 minutes).
    Render {
        /// A MIDI file (default: the MAESTRO sample closest to 2.8 minutes).
        file: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// CPU time to build and tessellate one frame of the piano roll with a large piece.
    Roll {
        #[arg(long, default_value_t = 30_000)]
        notes: usize,
        #[arg(long, default_value_t = 50)]
        frames: usize,
    },
    /// Generation events/s at batch 1, with candle_nn's LSTM as the baseline.
    Generate {
        #[arg(long, default_value_t = 2000)]
        events: usize,
        #[arg(long, default_value_t = 256)]
        embed: usize,
        #[arg(long, default_value_t = 512)]
        hidden: usize,
        #[arg(long)]
        no_baseline: bool,
    },
}

pub fn run(what: BenchCommand) -> anyhow::Result<ExitCode> {
    match what {
        BenchCommand::Corpus { dir, runs } => bench_corpus(
            dir.unwrap_or_else(crate::assets::demo_corpus_dir),
            runs.max(1),
        ),
        BenchCommand::Train {
            batch,
            seq,
            embed,
            hidden,
            iters,
            no_baseline,
            composed,
            attention,
            device,
            tf32,
            phases,
        } => {
            // The sizes are checked as `train` checks them, before they size any buffer.
            crate::train::TrainConfig {
                model: crate::model::ModelConfig {
                    embed,
                    hidden,
                    ..Default::default()
                },
                batch,
                seq_len: seq,
                ..Default::default()
            }
            .validate()
            .map_err(anyhow::Error::msg)?;
            let sizes = bench_model::Sizes {
                batch,
                seq,
                embed,
                hidden,
            };
            crate::device::set_tf32(tf32);
            let device = device
                .unwrap_or(crate::device::DeviceChoice::Cpu)
                .open()
                .map_err(anyhow::Error::msg)?;
            let rows = bench_model::TrainRows {
                baseline: !no_baseline,
                composed,
                attention,
                phases,
            };
            bench_model::bench_train(&sizes, iters.max(1), rows, &device)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Render { file, runs } => {
            super::bench_studio::bench_render(file.as_deref(), runs.max(1))?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Roll { notes, frames } => {
            super::bench_studio::bench_roll(notes, frames.max(1))?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Generate {
            events,
            embed,
            hidden,
            no_baseline,
        } => {
            let sizes = bench_model::Sizes {
                batch: 1,
                seq: 1,
                embed,
                hidden,
            };
            bench_model::bench_generate(&sizes, events.max(1), !no_baseline)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn bench_corpus(dir: PathBuf, runs: usize) -> anyhow::Result<ExitCode> {
    let files = super::with_path(scan_midi_files(&dir), "cannot read the folder", &dir)?;
    // Reading from disk is excluded: the page cache makes it noise, and the parse is what we own.
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|f| super::with_path(std::fs::read(f), "cannot read", f))
        .collect::<anyhow::Result<_>>()?;
    let total_bytes: usize = bytes.iter().map(Vec::len).sum();
    let mut times = Vec::with_capacity(runs);
    let mut events = 0;
    for _ in 0..runs {
        let t0 = Instant::now();
        events = bytes
            .par_iter()
            .map(|b| parse_midi(b).map(|p| encode_piece(&p).len()).unwrap_or(0))
            .sum::<usize>();
        times.push(t0.elapsed().as_secs_f64());
    }
    let median = median(times);
    println!(
        "bench corpus: {} files, {:.1} MB, {} events, {} threads",
        files.len(),
        total_bytes as f64 / 1e6,
        events,
        rayon::current_num_threads()
    );
    println!(
        "  median of {runs}: {:.1} ms -> {:.2} M events/s, {:.0} files/s",
        median * 1e3,
        events as f64 / median / 1e6,
        files.len() as f64 / median
    );
    Ok(ExitCode::SUCCESS)
}

/// The middle of a set of timings (the upper middle for an even count).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
