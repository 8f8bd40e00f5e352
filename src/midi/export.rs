//! MIDI export for a DAW: a tempo written into the file so the DAW's bars line up with the music,
//! optional quantisation of onsets and ends to a grid (1/4 to 1/32, straight or triplet), and
//! the track's name. Plain saving ([`super::write_midi`]) keeps the engine's exact 1 ms ticks.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::write::smf_bytes;
use super::{MidiError, MidiErrorKind};
use crate::performance::Performance;

/// Divisible by 3 (triplets) and by 8 (1/32 notes), as DAWs' own files are.
pub const EXPORT_TICKS_PER_QUARTER: u16 = 480;
pub const MIN_BPM: f64 = 20.0;
pub const MAX_BPM: f64 = 400.0;
pub const GRID_FORMS: &str = "1/4, 1/8, 1/16 or 1/32, with T for triplets (1/8T), or off";

/// A quantisation grid: 1/`division` notes, or their triplets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grid {
    /// 4, 8, 16 or 32.
    pub division: u32,
    pub triplet: bool,
}

impl Grid {
    /// "1/16", "1/8T" (also "1/8t", "16", "8T").
    pub fn parse(text: &str) -> Result<Grid, String> {
        let t = text.trim();
        let fail = || format!("unknown grid `{text}`: use {GRID_FORMS}");
        let t = t.strip_prefix("1/").unwrap_or(t);
        let (number, triplet) = match t.strip_suffix(['T', 't']) {
            Some(n) => (n, true),
            None => (t, false),
        };
        let division: u32 = number.parse().map_err(|_| fail())?;
        if ![4, 8, 16, 32].contains(&division) {
            return Err(fail());
        }
        Ok(Grid { division, triplet })
    }

    pub fn name(&self) -> String {
        format!("1/{}{}", self.division, if self.triplet { "T" } else { "" })
    }

    /// The grid's step in ticks of [`EXPORT_TICKS_PER_QUARTER`].
    pub fn ticks(&self) -> u64 {
        let straight = EXPORT_TICKS_PER_QUARTER as u64 * 4 / self.division as u64;
        if self.triplet {
            straight * 2 / 3
        } else {
            straight
        }
    }

    /// Every grid the studio offers, coarse to fine.
    pub fn all() -> Vec<Grid> {
        [4, 8, 16, 32]
            .into_iter()
            .flat_map(|division| [false, true].map(|triplet| Grid { division, triplet }))
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExportOptions {
    /// Written as the file's tempo; the music keeps its timing in seconds.
    pub bpm: f64,
    pub quantize: Option<Grid>,
    pub track_name: String,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            bpm: 120.0,
            quantize: None,
            track_name: "Piano".into(),
        }
    }
}

impl ExportOptions {
    pub fn validate(&self) -> Result<(), String> {
        crate::bounds::check("bpm", self.bpm, MIN_BPM..=MAX_BPM)?;
        crate::bounds::check("track name length", self.track_name.len(), 0..=255)
    }
}

/// The bytes of a file for a DAW (see [`ExportOptions`]). Quantising never loses a note: when two
/// onsets of one pitch land on one grid line, the later moves to the next line, and every note
/// lasts at least one grid step.
pub fn export_bytes(perf: &Performance, options: &ExportOptions) -> Result<Vec<u8>, MidiError> {
    options
        .validate()
        .map_err(|e| MidiError::new(MidiErrorKind::Write(std::io::Error::other(e))))?;
    let ticks_per_second = EXPORT_TICKS_PER_QUARTER as f64 * options.bpm / 60.0;
    let tick = |seconds: f64| (seconds.max(0.0) * ticks_per_second).round() as u64;
    let step = options.quantize.map_or(1, |g| g.ticks());
    let snap = |t: u64| (t + step / 2) / step * step;
    let mut notes: Vec<(u64, u64, u8, u8)> = perf
        .notes
        .iter()
        .map(|n| (snap(tick(n.start)), snap(tick(n.end)), n.pitch, n.velocity))
        .collect();
    notes.sort_unstable_by_key(|&(start, _, pitch, _)| (pitch, start));
    let mut timed = Vec::with_capacity(notes.len() * 2);
    for i in 0..notes.len() {
        let (start, end, pitch, velocity) = notes[i];
        let start = match i.checked_sub(1).map(|j| notes[j]) {
            Some((prev_start, _, prev_pitch, _)) if prev_pitch == pitch && start <= prev_start => {
                prev_start + step
            }
            _ => start,
        };
        notes[i].0 = start;
        let mut end = end.max(start + step);
        if let Some(&(next_start, _, next_pitch, _)) = notes.get(i + 1)
            && next_pitch == pitch
        {
            // A key is released before it is struck again (the next onset only moves later).
            let next_start = next_start.max(start + step);
            end = end.min(next_start);
        }
        timed.push((start, true, pitch, velocity));
        timed.push((end, false, pitch, 0));
    }
    let us_per_quarter = (60e6 / options.bpm).round() as u32;
    smf_bytes(
        timed,
        EXPORT_TICKS_PER_QUARTER,
        us_per_quarter,
        options.track_name.as_bytes(),
    )
}

/// Writes an export atomically (see [`export_bytes`]).
pub fn export_midi(
    perf: &Performance,
    path: &Path,
    options: &ExportOptions,
) -> Result<(), MidiError> {
    let bytes = export_bytes(perf, options).map_err(|e| e.at(path))?;
    crate::fsutil::write_atomic(path, &bytes)
        .map_err(|e| MidiError::new(MidiErrorKind::Write(e)).at(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::performance::Note;

    #[test]
    fn grids_parse_and_size() {
        assert_eq!(Grid::parse("1/16").unwrap().ticks(), 120);
        assert_eq!(Grid::parse("1/8T").unwrap().ticks(), 160);
        assert_eq!(Grid::parse("1/32t").unwrap().ticks(), 40);
        assert_eq!(Grid::parse("4").unwrap().ticks(), 480);
        for bad in ["1/3", "1/64", "sixteenth", ""] {
            assert!(Grid::parse(bad).unwrap_err().contains("1/8T"), "{bad}");
        }
        assert_eq!(Grid::all().len(), 8);
    }

    #[test]
    fn quantising_keeps_every_note_of_a_repeated_pitch() {
        // Three strikes of one key 20 ms apart all land on one 1/16 line at 120 BPM.
        let perf = Performance::from_notes(vec![
            Note::new(60, 80, 1.00, 1.02),
            Note::new(60, 80, 1.02, 1.04),
            Note::new(60, 80, 1.04, 1.30),
            Note::new(64, 70, 0.49, 2.0),
        ]);
        let options = ExportOptions {
            quantize: Some(Grid::parse("1/16").unwrap()),
            track_name: "Take 3".into(),
            ..ExportOptions::default()
        };
        let back = super::super::parse_midi(&export_bytes(&perf, &options).unwrap()).unwrap();
        assert_eq!(back.len(), perf.len());
        let starts: Vec<f64> = back.notes.iter().map(|n| n.start).collect();
        assert_eq!(starts, [0.5, 1.0, 1.125, 1.25]);
    }
}
