//! The engine's musical data: a piece as a list of notes with times in seconds.
//!
//! Everything that reads or writes music meets here: MIDI files are parsed into a [`Performance`],
//! the tokenizer turns one into events and back, the synth renders one and the piano roll draws one.

use serde::{Deserialize, Serialize};

/// One sounding note. Times are seconds from the start of the piece; `end > start` always holds
/// for notes inside a normalised [`Performance`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub pitch: u8,
    pub velocity: u8,
    pub start: f64,
    pub end: f64,
}

impl Note {
    pub fn new(pitch: u8, velocity: u8, start: f64, end: f64) -> Self {
        Note {
            pitch,
            velocity,
            start,
            end,
        }
    }

    pub fn duration(&self) -> f64 {
        self.end - self.start
    }
}

/// A piece: notes sorted by start time, then pitch. Sustain pedal is already folded into note ends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Performance {
    pub notes: Vec<Note>,
}

impl Performance {
    /// Builds a normalised performance from notes in any order (see [`Performance::normalize`]).
    pub fn from_notes(notes: Vec<Note>) -> Self {
        let mut perf = Performance { notes };
        perf.normalize();
        perf
    }

    /// Restores the invariants every consumer relies on: pitches and velocities in MIDI range,
    /// finite non-negative times, no empty notes, sorted by (start, pitch), and no two notes of one
    /// pitch sounding at once (a re-struck pitch ends the earlier note at the new onset, as a piano
    /// damper would).
    pub fn normalize(&mut self) {
        self.notes.retain(|n| {
            n.pitch <= 127 && n.start.is_finite() && n.end.is_finite() && n.start >= 0.0
        });
        for n in &mut self.notes {
            n.velocity = n.velocity.clamp(1, 127);
        }
        self.notes.sort_by(|a, b| {
            a.start
                .total_cmp(&b.start)
                .then(a.pitch.cmp(&b.pitch))
                .then(b.end.total_cmp(&a.end))
        });
        let mut last_of_pitch: [Option<usize>; 128] = [None; 128];
        for i in 0..self.notes.len() {
            let note = self.notes[i];
            if let Some(prev) = last_of_pitch[note.pitch as usize] {
                let earlier = &mut self.notes[prev];
                if earlier.end > note.start {
                    earlier.end = note.start;
                }
            }
            last_of_pitch[note.pitch as usize] = Some(i);
        }
        self.notes.retain(|n| n.end > n.start);
    }

    pub fn len(&self) -> usize {
        self.notes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.notes.is_empty()
    }

    /// The time the last note stops sounding, in seconds (0 for an empty piece).
    pub fn end_time(&self) -> f64 {
        self.notes.iter().map(|n| n.end).fold(0.0, f64::max)
    }

    /// The notes that start before `seconds`, cut at that time: used for primers.
    pub fn first_seconds(&self, seconds: f64) -> Performance {
        let notes = self
            .notes
            .iter()
            .filter(|n| n.start < seconds)
            .map(|n| Note {
                end: n.end.min(seconds),
                ..*n
            })
            .collect();
        Performance::from_notes(notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(pitch: u8, start: f64, end: f64) -> Note {
        Note {
            pitch,
            velocity: 64,
            start,
            end,
        }
    }

    #[test]
    fn normalize_sorts_and_cuts_overlapping_same_pitch() {
        let perf = Performance::from_notes(vec![
            note(60, 1.0, 3.0),
            note(64, 0.5, 1.0),
            note(60, 2.0, 2.5),
        ]);
        assert_eq!(
            perf.notes,
            vec![note(64, 0.5, 1.0), note(60, 1.0, 2.0), note(60, 2.0, 2.5)]
        );
    }

    #[test]
    fn normalize_drops_empty_and_invalid_notes() {
        let perf = Performance::from_notes(vec![
            note(60, 1.0, 1.0),
            note(61, f64::NAN, 2.0),
            note(200, 0.0, 1.0),
            note(62, -1.0, 1.0),
            note(63, 0.0, 1.0),
        ]);
        assert_eq!(perf.notes, vec![note(63, 0.0, 1.0)]);
    }
}
