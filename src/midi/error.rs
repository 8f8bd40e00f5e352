use std::fmt;
use std::path::{Path, PathBuf};

/// What was wrong with a MIDI file. Each message includes its cause, so none is chained as a
/// `source` (a chain would print the same words twice).
#[derive(Debug, thiserror::Error)]
pub enum MidiErrorKind {
    #[error("cannot read the file: {0}")]
    Io(std::io::Error),
    #[error("cannot write the file: {0}")]
    Write(std::io::Error),
    #[error("the file is {size} bytes, larger than the {limit}-byte limit for a MIDI file")]
    TooLarge { size: u64, limit: u64 },
    #[error("not a regular file (a folder, pipe or device cannot be read as MIDI)")]
    NotAFile,
    #[error("not a valid Standard MIDI File: {0}")]
    Parse(String),
    #[error("the header gives 0 ticks per quarter note")]
    ZeroTicksPerQuarter,
    #[error("the header gives SMPTE timing with 0 ticks per frame")]
    ZeroTicksPerFrame,
    #[error("a note starts at {seconds:.0} s, later than the {limit:.0} s a piece may last")]
    TooLong { seconds: f64, limit: f64 },
}

/// A MIDI file that could not be read or written, naming the file when there is one.
#[derive(Debug)]
pub struct MidiError {
    pub path: Option<PathBuf>,
    pub kind: MidiErrorKind,
}

impl MidiError {
    pub fn new(kind: MidiErrorKind) -> Self {
        MidiError { path: None, kind }
    }

    pub fn at(mut self, path: &Path) -> Self {
        self.path = Some(path.to_path_buf());
        self
    }
}

impl From<std::io::Error> for MidiErrorKind {
    fn from(e: std::io::Error) -> Self {
        MidiErrorKind::Io(e)
    }
}

impl From<MidiErrorKind> for MidiError {
    fn from(kind: MidiErrorKind) -> Self {
        MidiError::new(kind)
    }
}

impl fmt::Display for MidiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}: {}", path.display(), self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl std::error::Error for MidiError {}
