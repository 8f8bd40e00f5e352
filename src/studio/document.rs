//! The piece on the roll: notes with where they came from, a selection, and undo.

use std::path::PathBuf;

use crate::performance::{Note, Performance};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteOrigin {
    /// Opened from a file.
    Loaded,
    /// The part of a take the model was primed with.
    Primer,
    /// Written by the model.
    Generated,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RollNote {
    pub note: Note,
    pub origin: NoteOrigin,
    pub selected: bool,
}

const UNDO_DEPTH: usize = 100;

#[derive(Clone, Debug, Default)]
pub struct Document {
    /// Sorted by start time.
    notes: Vec<RollNote>,
    pub name: String,
    pub path: Option<PathBuf>,
    /// The file's tempo, for drawing bars.
    pub tempo_bpm: Option<f64>,
    undo: Vec<Vec<RollNote>>,
    /// Bumped on every change, so the player knows to reload.
    revision: u64,
    /// The revision last saved, opened or generated: edits since then are unsaved.
    clean_revision: u64,
    /// The longest note, so the roll can find every note that overlaps a time window.
    longest: f64,
}

impl Document {
    pub fn new(name: impl Into<String>, perf: &Performance, origin: NoteOrigin) -> Self {
        let mut doc = Document {
            name: name.into(),
            ..Document::default()
        };
        doc.set_notes(
            perf.notes
                .iter()
                .map(|&note| RollNote {
                    note,
                    origin,
                    selected: false,
                })
                .collect(),
        );
        doc.clean_revision = doc.revision;
        doc
    }

    /// Whether the notes changed since the piece was opened, generated or saved.
    pub fn is_modified(&self) -> bool {
        self.revision != self.clean_revision
    }

    /// The piece as it is now has been saved.
    pub fn mark_saved(&mut self) {
        self.clean_revision = self.revision;
    }

    /// A take: notes before `primer_seconds` are the primer's.
    pub fn from_take(name: impl Into<String>, perf: &Performance, primer_seconds: f64) -> Self {
        let mut doc = Document::new(name, perf, NoteOrigin::Generated);
        for n in &mut doc.notes {
            if n.note.start < primer_seconds {
                n.origin = NoteOrigin::Primer;
            }
        }
        doc.clean_revision = doc.revision;
        doc
    }

    fn set_notes(&mut self, mut notes: Vec<RollNote>) {
        notes.sort_by(|a, b| {
            a.note
                .start
                .total_cmp(&b.note.start)
                .then(a.note.pitch.cmp(&b.note.pitch))
        });
        self.longest = notes.iter().map(|n| n.note.duration()).fold(0.0, f64::max);
        self.notes = notes;
        self.revision += 1;
    }

    /// Adds one note in time order (a note streamed in while generating).
    pub fn append(&mut self, note: Note, origin: NoteOrigin) {
        let at = self.notes.partition_point(|n| n.note.start <= note.start);
        self.notes.insert(
            at,
            RollNote {
                note,
                origin,
                selected: false,
            },
        );
        self.longest = self.longest.max(note.duration());
        self.revision += 1;
    }

    pub fn notes(&self) -> &[RollNote] {
        &self.notes
    }

    pub fn len(&self) -> usize {
        self.notes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.notes.is_empty()
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn end_time(&self) -> f64 {
        self.notes.iter().map(|n| n.note.end).fold(0.0, f64::max)
    }

    /// The index range of notes that may overlap `[from, to)` seconds.
    pub fn visible_range(&self, from: f64, to: f64) -> std::ops::Range<usize> {
        let first = self
            .notes
            .partition_point(|n| n.note.start < from - self.longest);
        let last = self.notes.partition_point(|n| n.note.start < to);
        first..last.max(first)
    }

    pub fn performance(&self) -> Performance {
        Performance::from_notes(self.notes.iter().map(|n| n.note).collect())
    }

    pub fn selected_performance(&self) -> Performance {
        Performance::from_notes(
            self.notes
                .iter()
                .filter(|n| n.selected)
                .map(|n| n.note)
                .collect(),
        )
    }

    pub fn selection_count(&self) -> usize {
        self.notes.iter().filter(|n| n.selected).count()
    }

    pub fn clear_selection(&mut self) {
        for n in &mut self.notes {
            n.selected = false;
        }
    }

    pub fn set_selected(&mut self, index: usize, selected: bool) {
        if let Some(n) = self.notes.get_mut(index) {
            n.selected = selected;
        }
    }

    pub fn select_all(&mut self) {
        for n in &mut self.notes {
            n.selected = true;
        }
    }

    /// Selects notes that overlap the time range and lie within the pitch range (inclusive).
    pub fn select_box(&mut self, t0: f64, t1: f64, p0: u8, p1: u8, add: bool) {
        let (t0, t1) = (t0.min(t1), t0.max(t1));
        let (p0, p1) = (p0.min(p1), p0.max(p1));
        for n in &mut self.notes {
            let inside = n.note.end > t0 && n.note.start < t1 && (p0..=p1).contains(&n.note.pitch);
            n.selected = inside || (add && n.selected);
        }
    }

    /// Removes the selected notes; returns how many (undoable).
    pub fn delete_selected(&mut self) -> usize {
        let before = self.notes.len();
        let kept: Vec<RollNote> = self.notes.iter().filter(|n| !n.selected).copied().collect();
        if kept.len() == before {
            return 0;
        }
        self.undo.push(self.notes.clone());
        if self.undo.len() > UNDO_DEPTH {
            self.undo.remove(0);
        }
        self.set_notes(kept);
        before - self.notes.len()
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    pub fn undo(&mut self) -> bool {
        match self.undo.pop() {
            Some(notes) => {
                self.set_notes(notes);
                true
            }
            None => false,
        }
    }
}

/// "C4" for 60, "F#5" for 78.
pub fn pitch_name(pitch: u8) -> String {
    const NAMES: [&str; 12] = [
        "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
    ];
    format!("{}{}", NAMES[pitch as usize % 12], pitch as i32 / 12 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Document {
        let notes = (0..10)
            .map(|i| Note {
                pitch: 60 + i,
                velocity: 80,
                start: i as f64,
                end: i as f64 + 0.5,
            })
            .collect();
        Document::new("t", &Performance::from_notes(notes), NoteOrigin::Loaded)
    }

    #[test]
    fn delete_and_undo_restore_the_notes() {
        let mut d = doc();
        d.select_box(2.2, 4.1, 0, 127, false);
        assert_eq!(d.selection_count(), 3);
        assert_eq!(d.delete_selected(), 3);
        assert_eq!(d.len(), 7);
        assert!(d.undo());
        assert_eq!(d.len(), 10);
        assert!(!d.undo());
    }

    #[test]
    fn visible_range_includes_long_notes_that_started_earlier() {
        let mut notes = vec![Note {
            pitch: 40,
            velocity: 80,
            start: 0.0,
            end: 20.0,
        }];
        notes.extend((1..30).map(|i| Note {
            pitch: 60,
            velocity: 80,
            start: i as f64,
            end: i as f64 + 0.5,
        }));
        let d = Document::new("t", &Performance::from_notes(notes), NoteOrigin::Loaded);
        let r = d.visible_range(10.0, 12.0);
        assert!(r.contains(&0), "{r:?}");
        assert!(r.end <= d.len());
    }

    #[test]
    fn names() {
        assert_eq!(pitch_name(60), "C4");
        assert_eq!(pitch_name(69), "A4");
        assert_eq!(pitch_name(21), "A0");
    }
}
