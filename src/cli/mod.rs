//! The `echoai` command line: argument definitions and the library calls behind each command.

mod audio_cmd;
mod bench;
mod bench_fma;
mod bench_model;
mod bench_studio;
mod corpus_cmd;
mod generate_cmd;
mod stats_cmd;
mod train_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::midi::{read_midi, write_midi};
use crate::tokenizer::{decode, encode};

#[derive(Parser, Debug)]
#[command(
    name = "echoai",
    version,
    about = "EchoAI Studio: train neural sequence models on piano MIDI, generate, listen, export.",
    long_about = "EchoAI Studio: train neural sequence models on piano MIDI, generate, listen, export.\n\n\
                  With no command, opens the studio window. Every command runs headless."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Scan a folder of MIDI files and summarise it as training data (files, hours, splits, failures).
    Corpus {
        /// The folder to scan recursively for .mid/.midi files (a MAESTRO csv at its root gives the splits).
        dir: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Round-trip a MIDI file through the model's events: hear what the model sees.
    Convert {
        /// The MIDI file to read.
        input: PathBuf,
        /// Where to write the result (format 1, one piano track).
        output: PathBuf,
        /// Replace OUTPUT if it already exists.
        #[arg(long)]
        overwrite: bool,
    },
    /// Train a model on a folder of MIDI files, writing a checkpoint directory.
    Train(train_cmd::TrainArgs),
    /// Generate new music from a checkpoint, optionally continuing a primer.
    Generate(generate_cmd::GenerateArgs),
    /// Score a checkpoint on a split of a corpus: NLL in nats/event and perplexity.
    Eval(generate_cmd::EvalArgs),
    /// Render a MIDI file to a WAV file with the built-in piano (or a SoundFont).
    Render {
        input: PathBuf,
        output: PathBuf,
        /// An .sf2 file to play instead of the built-in piano.
        #[arg(long)]
        soundfont: Option<PathBuf>,
        /// Replace OUTPUT if it already exists.
        #[arg(long)]
        overwrite: bool,
    },
    /// Play a MIDI file through the built-in synth, or on a MIDI output port.
    Play {
        input: PathBuf,
        /// A MIDI output port (name, part of a name, or index from `echoai ports`; `virtual` opens a
        /// port named "EchoAI Studio" that a DAW can record from).
        #[arg(long)]
        port: Option<String>,
        #[arg(long)]
        soundfont: Option<PathBuf>,
    },
    /// List MIDI input and output ports.
    Ports,
    /// Record from a MIDI input port into a MIDI file (for example a primer).
    Record {
        /// The input port (name, part of a name, or index).
        #[arg(long)]
        port: String,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        output: PathBuf,
        /// Replace OUTPUT if it already exists.
        #[arg(long)]
        overwrite: bool,
    },
    /// Statistics of a MIDI file or folder; with --compare, how a generated set differs from a corpus.
    Stats {
        /// A MIDI file or folder.
        path: Option<PathBuf>,
        /// A folder of generated pieces to compare against --reference.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// The reference corpus folder.
        #[arg(long)]
        reference: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Measure the engine's speed.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

/// Runs one command; the error, if any, is printed by `main`.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => match crate::studio::run() {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Some(Command::Corpus { dir, json }) => corpus_cmd::run(&dir, json),
        Some(Command::Convert {
            input,
            output,
            overwrite,
        }) => convert(&input, &output, overwrite),
        Some(Command::Train(args)) => train_cmd::run(args),
        Some(Command::Generate(args)) => generate_cmd::run_generate(args),
        Some(Command::Eval(args)) => generate_cmd::run_eval(args),
        Some(Command::Render {
            input,
            output,
            soundfont,
            overwrite,
        }) => audio_cmd::run_render(&input, &output, soundfont.as_deref(), overwrite),
        Some(Command::Play {
            input,
            port,
            soundfont,
        }) => audio_cmd::run_play(&input, port.as_deref(), soundfont.as_deref()),
        Some(Command::Ports) => audio_cmd::run_ports(),
        Some(Command::Record {
            port,
            seconds,
            output,
            overwrite,
        }) => audio_cmd::run_record(&port, seconds, &output, overwrite),
        Some(Command::Stats {
            path,
            compare,
            reference,
            json,
        }) => stats_cmd::run(
            path.as_deref(),
            compare.as_deref(),
            reference.as_deref(),
            json,
        ),
        Some(Command::Bench { what }) => bench::run(what),
    }
}

fn convert(
    input: &std::path::Path,
    output: &std::path::Path,
    overwrite: bool,
) -> anyhow::Result<ExitCode> {
    crate::fsutil::check_output(output, overwrite).map_err(anyhow::Error::msg)?;
    let perf = read_midi(input)?;
    let events = encode(&perf);
    let round_trip = decode(&events);
    write_midi(&round_trip, output)?;
    eprintln!(
        "{}: {} notes, {:.1} s, {} events -> {}",
        input.display(),
        round_trip.len(),
        round_trip.end_time(),
        events.len(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// An error for a path the user gave, saying which.
pub(crate) fn with_path<T, E: std::error::Error + Send + Sync + 'static>(
    result: Result<T, E>,
    what: &str,
    path: &std::path::Path,
) -> anyhow::Result<T> {
    result.with_context(|| format!("{what} {}", path.display()))
}
