//! `echoai corpus DIR`.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use crate::corpus::{Corpus, Split};

pub fn run(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let show_progress = std::io::stderr().is_terminal() && !json;
    let progress = |done: usize, total: usize| {
        if show_progress && (done.is_multiple_of(16) || done == total) {
            eprint!("\rparsing {done}/{total} files");
        }
    };
    let corpus = Corpus::load(dir, &progress)?;
    if show_progress {
        eprintln!();
    }
    let s = &corpus.summary;
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
    } else {
        println!("{}", s.root);
        println!(
            "  {} files parsed, {} failed; {} notes, {:.2} hours, {} events (splits: {})",
            s.files_ok,
            s.files_failed,
            s.notes,
            s.seconds / 3600.0,
            s.events,
            s.split_source
        );
        for split in Split::ALL {
            let part = s.split(split);
            println!(
                "  {:<10} {:>5} files {:>9} notes {:>7.2} h {:>10} events",
                split.name(),
                part.files,
                part.notes,
                part.seconds / 3600.0,
                part.events
            );
        }
        for failure in &s.failures {
            println!("  failed: {}: {}", failure.path, failure.error);
        }
    }
    if s.files_ok == 0 {
        eprintln!("error: no MIDI file in {} could be read", dir.display());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
