//! Reading any Standard MIDI File into a [`Performance`].

use std::io::Read;
use std::path::Path;

use midly::{Format, MetaMessage, MidiMessage, Smf, TrackEvent, TrackEventKind};

use super::tempo::TempoMap;
use super::{MidiError, MidiErrorKind};
use crate::performance::{Note, Performance};

/// Larger files are refused before they are read: the largest MAESTRO file is under 1 MB.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// A note starting later than this is taken as a corrupt file (a hostile delta time could otherwise
/// place notes years into the piece and make the tokenizer emit billions of time shifts).
pub const MAX_PIECE_SECONDS: f64 = 6.0 * 3600.0;

const DRUM_CHANNEL: u8 = 9;
const SUSTAIN_CONTROLLER: u8 = 64;

/// Reads a MIDI file from disk. The error names the file.
pub fn read_midi(path: &Path) -> Result<Performance, MidiError> {
    let bytes = read_bounded(path).map_err(|e| MidiError::new(e).at(path))?;
    parse_midi(&bytes).map_err(|e| e.at(path))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, MidiErrorKind> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size > MAX_FILE_BYTES {
        return Err(MidiErrorKind::TooLarge {
            size,
            limit: MAX_FILE_BYTES,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Parses the bytes of a Standard MIDI File (format 0, 1 or 2; metrical or SMPTE timing).
///
/// All channels but the drum channel (10) are merged into one piano part; the sustain pedal is
/// folded into note ends. Format 2 files hold independent patterns, which are played one after the
/// other.
pub fn parse_midi(bytes: &[u8]) -> Result<Performance, MidiError> {
    let smf = Smf::parse(bytes).map_err(|e| MidiErrorKind::Parse(e.to_string()))?;
    let mut notes = Vec::new();
    match smf.header.format {
        Format::SingleTrack | Format::Parallel => {
            let tracks: Vec<&[TrackEvent]> = smf.tracks.iter().map(|t| t.as_slice()).collect();
            collect_notes(&smf, &tracks, 0.0, &mut notes)?;
        }
        Format::Sequential => {
            let mut offset = 0.0;
            for track in &smf.tracks {
                let end = collect_notes(&smf, &[track.as_slice()], offset, &mut notes)?;
                offset = end.max(offset);
            }
        }
    }
    if let Some(late) = notes.iter().find(|n| n.start > MAX_PIECE_SECONDS) {
        return Err(MidiErrorKind::TooLong {
            seconds: late.start,
            limit: MAX_PIECE_SECONDS,
        }
        .into());
    }
    Ok(Performance::from_notes(notes))
}

/// One channel-message or tempo event with its absolute tick, in file order.
struct Timed<'a> {
    tick: u64,
    kind: TrackEventKind<'a>,
}

/// Plays `tracks` together from `offset` seconds, appending their notes; returns the time of the
/// last event.
fn collect_notes(
    smf: &Smf,
    tracks: &[&[TrackEvent]],
    offset: f64,
    notes: &mut Vec<Note>,
) -> Result<f64, MidiError> {
    let mut events = Vec::with_capacity(tracks.iter().map(|t| t.len()).sum());
    let mut tempos = Vec::new();
    for track in tracks {
        let mut tick = 0u64;
        for event in *track {
            tick += event.delta.as_int() as u64;
            match event.kind {
                TrackEventKind::Meta(MetaMessage::Tempo(us)) => tempos.push((tick, us.as_int())),
                TrackEventKind::Midi { .. } => events.push(Timed {
                    tick,
                    kind: event.kind,
                }),
                _ => {}
            }
        }
    }
    // Stable, and releases before onsets at one tick: a file that writes the new note-on before the
    // old note's note-off at the same tick still means "release, then strike again".
    events.sort_by_key(|e| (e.tick, is_onset(&e.kind)));
    let map = TempoMap::new(smf.header.timing, tempos)?;
    let mut channels: Vec<ChannelState> = (0..16).map(|_| ChannelState::default()).collect();
    let mut last_time = offset;
    for event in &events {
        let time = offset + map.seconds(event.tick);
        last_time = time;
        let TrackEventKind::Midi { channel, message } = event.kind else {
            continue;
        };
        let channel = channel.as_int();
        if channel == DRUM_CHANNEL {
            continue;
        }
        let state = &mut channels[channel as usize];
        match message {
            MidiMessage::NoteOn { key, vel } if vel.as_int() > 0 => {
                state.note_on(key.as_int(), vel.as_int(), time, notes)
            }
            MidiMessage::NoteOn { key, .. } | MidiMessage::NoteOff { key, .. } => {
                state.note_off(key.as_int(), time, notes)
            }
            MidiMessage::Controller { controller, value }
                if controller.as_int() == SUSTAIN_CONTROLLER =>
            {
                state.pedal(value.as_int() >= 64, time, notes)
            }
            _ => {}
        }
    }
    for state in &mut channels {
        state.end_all(last_time, notes);
    }
    Ok(last_time)
}

fn is_onset(kind: &TrackEventKind) -> bool {
    matches!(kind, TrackEventKind::Midi { message: MidiMessage::NoteOn { vel, .. }, .. } if vel.as_int() > 0)
}

/// A note that has started and not yet been written out.
#[derive(Clone, Copy)]
struct Sounding {
    start: f64,
    velocity: u8,
    /// The key was released while the pedal was down: the note rings until the pedal lifts.
    held_by_pedal: bool,
}

/// Per-channel key and pedal state, folding the sustain pedal into note ends as Magenta does.
struct ChannelState {
    sounding: [Option<Sounding>; 128],
    pedal_down: bool,
}

impl Default for ChannelState {
    fn default() -> Self {
        ChannelState {
            sounding: [None; 128],
            pedal_down: false,
        }
    }
}

impl ChannelState {
    fn note_on(&mut self, pitch: u8, velocity: u8, time: f64, notes: &mut Vec<Note>) {
        // A re-struck key ends the earlier note at the new onset.
        self.finish(pitch, time, notes);
        self.sounding[pitch as usize] = Some(Sounding {
            start: time,
            velocity,
            held_by_pedal: false,
        });
    }

    fn note_off(&mut self, pitch: u8, time: f64, notes: &mut Vec<Note>) {
        if self.pedal_down {
            if let Some(s) = &mut self.sounding[pitch as usize] {
                s.held_by_pedal = true;
            }
        } else {
            self.finish(pitch, time, notes);
        }
    }

    fn pedal(&mut self, down: bool, time: f64, notes: &mut Vec<Note>) {
        if self.pedal_down && !down {
            for pitch in 0..128u8 {
                if self.sounding[pitch as usize].is_some_and(|s| s.held_by_pedal) {
                    self.finish(pitch, time, notes);
                }
            }
        }
        self.pedal_down = down;
    }

    fn end_all(&mut self, time: f64, notes: &mut Vec<Note>) {
        for pitch in 0..128u8 {
            self.finish(pitch, time, notes);
        }
    }

    fn finish(&mut self, pitch: u8, time: f64, notes: &mut Vec<Note>) {
        if let Some(s) = self.sounding[pitch as usize].take() {
            if time > s.start {
                notes.push(Note {
                    pitch,
                    velocity: s.velocity,
                    start: s.start,
                    end: time,
                });
            }
        }
    }
}
