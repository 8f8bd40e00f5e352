//! The `echoai` command line: argument definitions and the library calls behind each command.

mod bench;
mod bench_model;
mod corpus_cmd;
mod generate_cmd;
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
                  With no command, prints this help. Every command runs headless."
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
    },
    /// Train a model on a folder of MIDI files, writing a checkpoint directory.
    Train(train_cmd::TrainArgs),
    /// Generate new music from a checkpoint, optionally continuing a primer.
    Generate(generate_cmd::GenerateArgs),
    /// Score a checkpoint on a split of a corpus: NLL in nats/event and perplexity.
    Eval(generate_cmd::EvalArgs),
    /// Measure the engine's speed.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

/// Runs one command; the error, if any, is printed by `main`.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            println!();
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Corpus { dir, json }) => corpus_cmd::run(&dir, json),
        Some(Command::Convert { input, output }) => convert(&input, &output),
        Some(Command::Train(args)) => train_cmd::run(args),
        Some(Command::Generate(args)) => generate_cmd::run_generate(args),
        Some(Command::Eval(args)) => generate_cmd::run_eval(args),
        Some(Command::Bench { what }) => bench::run(what),
    }
}

fn convert(input: &std::path::Path, output: &std::path::Path) -> anyhow::Result<ExitCode> {
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
