//! Standard MIDI Files to and from [`Performance`](crate::performance::Performance), through midly.

mod error;
mod export;
mod notes;
mod read;
mod tempo;
mod write;

pub use error::{MidiError, MidiErrorKind};
pub use export::{
    EXPORT_TICKS_PER_QUARTER, ExportOptions, GRID_FORMS, Grid, MAX_BPM, MIN_BPM, export_bytes,
    export_midi,
};
pub use notes::{DRUM_CHANNEL, NoteTracker};
pub use read::{
    MAX_FILE_BYTES, MAX_PIECE_SECONDS, parse_midi, read_midi, read_midi_with_tempo, tempo_bpm,
};
pub use write::{TICKS_PER_QUARTER, WRITE_TEMPO_US_PER_QUARTER, midi_bytes, write_midi};
