//! A folder of MIDI files as training data: scan, split, parse in parallel, summarise, tokenize.

mod scan;
mod split;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::Serialize;

pub use scan::{is_midi_path, relative_key, scan_midi_files, scan_midi_files_until};
pub use split::{Split, SplitTable};

use crate::midi::read_midi;
use crate::tokenizer::encode_piece;

/// One parsed file, ready for training.
#[derive(Clone, Debug)]
pub struct Piece {
    /// Relative to the corpus root, `/`-separated.
    pub name: String,
    pub split: Split,
    pub notes: usize,
    pub seconds: f64,
    /// START, events, END.
    pub events: Vec<u16>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Failure {
    pub path: String,
    pub error: String,
}

/// Per-split counts.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SplitSummary {
    pub files: usize,
    pub notes: usize,
    pub seconds: f64,
    pub events: usize,
}

/// What a scan found, as `echoai corpus --json` prints it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct CorpusSummary {
    pub root: String,
    /// `maestro-csv` when a MAESTRO csv gave the splits, else `hash`.
    pub split_source: String,
    pub files_ok: usize,
    pub files_failed: usize,
    pub failures: Vec<Failure>,
    pub notes: usize,
    pub seconds: f64,
    pub events: usize,
    pub train: SplitSummary,
    pub validation: SplitSummary,
    pub test: SplitSummary,
}

impl CorpusSummary {
    pub fn split(&self, split: Split) -> &SplitSummary {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }

    fn split_mut(&mut self, split: Split) -> &mut SplitSummary {
        match split {
            Split::Train => &mut self.train,
            Split::Validation => &mut self.validation,
            Split::Test => &mut self.test,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Corpus {
    pub root: PathBuf,
    pub pieces: Vec<Piece>,
    pub summary: CorpusSummary,
}

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("cannot read the folder {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the MAESTRO csv could not be read: {0}")]
    Csv(String),
    #[error("the scan was cancelled")]
    Cancelled,
}

impl Corpus {
    /// Scans `root`, parses every MIDI file in parallel and tokenizes it. `progress(done, total)`
    /// is called from worker threads as files finish. Files that fail are listed in the summary.
    pub fn load(
        root: &Path,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Corpus, CorpusError> {
        Self::load_until(root, progress, &AtomicBool::new(false))
    }

    /// As [`Corpus::load`], giving up with [`CorpusError::Cancelled`] soon after `cancel` is set.
    pub fn load_until(
        root: &Path,
        progress: &(dyn Fn(usize, usize) + Sync),
        cancel: &AtomicBool,
    ) -> Result<Corpus, CorpusError> {
        let cancelled = || cancel.load(Ordering::Relaxed);
        let files = scan_midi_files_until(root, &cancelled).map_err(|source| {
            if source.kind() == std::io::ErrorKind::Interrupted {
                CorpusError::Cancelled
            } else {
                CorpusError::Unreadable {
                    path: root.to_path_buf(),
                    source,
                }
            }
        })?;
        let table = SplitTable::load(root).map_err(CorpusError::Csv)?;
        let total = files.len();
        let done = AtomicUsize::new(0);
        let results: Vec<Result<Piece, Failure>> = files
            .par_iter()
            .map(|path| {
                let name = relative_key(root, path);
                if cancelled() {
                    return Err(Failure {
                        path: name,
                        error: "cancelled".into(),
                    });
                }
                let result = read_midi(path)
                    .map(|perf| Piece {
                        split: table.split_of(&name),
                        notes: perf.len(),
                        seconds: perf.end_time(),
                        events: encode_piece(&perf),
                        name: name.clone(),
                    })
                    .map_err(|e| Failure {
                        path: name,
                        error: e.kind.to_string(),
                    });
                progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
                result
            })
            .collect();
        if cancelled() {
            return Err(CorpusError::Cancelled);
        }

        let mut summary = CorpusSummary {
            root: root.display().to_string(),
            split_source: if table.csv.is_some() {
                "maestro-csv"
            } else {
                "hash"
            }
            .into(),
            ..Default::default()
        };
        let mut pieces = Vec::with_capacity(results.len());
        for result in results {
            match result {
                Ok(piece) => {
                    summary.files_ok += 1;
                    summary.notes += piece.notes;
                    summary.seconds += piece.seconds;
                    summary.events += piece.events.len();
                    let s = summary.split_mut(piece.split);
                    s.files += 1;
                    s.notes += piece.notes;
                    s.seconds += piece.seconds;
                    s.events += piece.events.len();
                    pieces.push(piece);
                }
                Err(failure) => {
                    summary.files_failed += 1;
                    summary.failures.push(failure);
                }
            }
        }
        Ok(Corpus {
            root: root.to_path_buf(),
            pieces,
            summary,
        })
    }

    /// The pieces of one split.
    pub fn split(&self, split: Split) -> impl Iterator<Item = &Piece> {
        self.pieces.iter().filter(move |p| p.split == split)
    }

    /// One split's pieces joined end to end (each is START ... END): what training and
    /// evaluation read.
    pub fn stream(&self, split: Split) -> Vec<u16> {
        self.split(split)
            .flat_map(|p| p.events.iter().copied())
            .collect()
    }
}
