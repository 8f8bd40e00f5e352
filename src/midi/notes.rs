//! Turning a stream of channel messages into notes: per-channel key and sustain-pedal state,
//! shared by the file reader and live MIDI recording.

use midly::MidiMessage;

use crate::performance::Note;

pub const DRUM_CHANNEL: u8 = 9;
const SUSTAIN_CONTROLLER: u8 = 64;

/// Feed it channel messages in time order; it folds the sustain pedal into note ends (a key
/// released while the pedal is down rings until the pedal lifts; a re-struck key ends the earlier
/// note at the new onset) and drops the drum channel.
pub struct NoteTracker {
    channels: Vec<ChannelState>,
    notes: Vec<Note>,
}

impl Default for NoteTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl NoteTracker {
    pub fn new() -> Self {
        NoteTracker {
            channels: (0..16).map(|_| ChannelState::default()).collect(),
            notes: Vec::new(),
        }
    }

    pub fn handle(&mut self, channel: u8, message: MidiMessage, time: f64) {
        if channel == DRUM_CHANNEL || channel >= 16 {
            return;
        }
        let state = &mut self.channels[channel as usize];
        let notes = &mut self.notes;
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

    /// Ends every note still sounding at `time` and returns all notes (unsorted).
    pub fn finish(mut self, time: f64) -> Vec<Note> {
        for state in &mut self.channels {
            state.end_all(time, &mut self.notes);
        }
        self.notes
    }

    /// Notes completed so far.
    pub fn notes(&self) -> &[Note] {
        &self.notes
    }
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
        if let Some(s) = self.sounding[pitch as usize].take()
            && time > s.start
        {
            notes.push(Note {
                pitch,
                velocity: s.velocity,
                start: s.start,
                end: time,
            });
        }
    }
}
