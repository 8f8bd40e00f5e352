//! Performance <-> event ids: the model's vocabulary (Performance RNN style, see DESIGN.md).
//!
//! | ids        | event                                   |
//! |------------|-----------------------------------------|
//! | 0..=127    | NOTE_ON(pitch)                          |
//! | 128..=255  | NOTE_OFF(pitch)                         |
//! | 256..=355  | TIME_SHIFT(k x 10 ms), k = 1..=100      |
//! | 356..=387  | VELOCITY(bin), bin = (velocity - 1) / 4 |
//! | 388        | START                                   |
//! | 389        | END                                     |

use crate::performance::{Note, Performance};

pub const VOCAB_SIZE: usize = 390;
/// Bumped whenever the meaning of an id changes; stored in checkpoints.
pub const VOCAB_VERSION: u32 = 1;
pub const NOTE_ON: u16 = 0;
pub const NOTE_OFF: u16 = 128;
pub const TIME_SHIFT: u16 = 256;
pub const VELOCITY: u16 = 356;
pub const START: u16 = 388;
pub const END: u16 = 389;
pub const STEPS_PER_SECOND: f64 = 100.0;
pub const MAX_SHIFT_STEPS: u32 = 100;
pub const VELOCITY_BINS: u8 = 32;
/// Notes still sounding when a decoded sequence ends last at most this long.
pub const MAX_OPEN_NOTE_SECONDS: f64 = 5.0;

/// One decoded id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    NoteOn(u8),
    NoteOff(u8),
    /// Steps of 10 ms, 1..=100.
    TimeShift(u32),
    /// Velocity bin, 0..=31.
    Velocity(u8),
    Start,
    End,
}

impl Event {
    /// `None` for ids outside the vocabulary.
    pub fn from_id(id: u16) -> Option<Event> {
        Some(match id {
            0..=127 => Event::NoteOn(id as u8),
            128..=255 => Event::NoteOff((id - NOTE_OFF) as u8),
            256..=355 => Event::TimeShift((id - TIME_SHIFT) as u32 + 1),
            356..=387 => Event::Velocity((id - VELOCITY) as u8),
            START => Event::Start,
            END => Event::End,
            _ => return None,
        })
    }

    pub fn id(self) -> u16 {
        match self {
            Event::NoteOn(p) => NOTE_ON + p.min(127) as u16,
            Event::NoteOff(p) => NOTE_OFF + p.min(127) as u16,
            Event::TimeShift(k) => TIME_SHIFT + (k.clamp(1, MAX_SHIFT_STEPS) - 1) as u16,
            Event::Velocity(b) => VELOCITY + b.min(VELOCITY_BINS - 1) as u16,
            Event::Start => START,
            Event::End => END,
        }
    }
}

pub fn velocity_bin(velocity: u8) -> u8 {
    (velocity.clamp(1, 127) - 1) / 4
}

/// The middle of a bin's velocity range (the top bin holds only 125..=127).
pub fn bin_velocity(bin: u8) -> u8 {
    (bin.min(VELOCITY_BINS - 1) * 4 + 3).min(127)
}

fn to_steps(seconds: f64) -> u64 {
    (seconds.max(0.0) * STEPS_PER_SECOND).round() as u64
}

/// Encodes a performance as events, without START or END. Times are rounded to the 10 ms grid;
/// a note rounded to zero length lasts one step unless the same pitch strikes again there.
pub fn encode(perf: &Performance) -> Vec<u16> {
    // (step, is_onset, pitch, velocity): releases first at each step, then onsets, each ascending.
    let mut timed: Vec<(u64, bool, u8, u8)> = Vec::with_capacity(perf.notes.len() * 2);
    let mut next_onset_of_pitch = [u64::MAX; 128];
    let mut quantized: Vec<(u64, u64, &Note)> = perf
        .notes
        .iter()
        .map(|n| (to_steps(n.start), to_steps(n.end), n))
        .collect();
    // Walk each pitch's notes backwards to know where its next onset is.
    quantized.sort_by_key(|&(start, _, n)| (start, n.pitch));
    for &(start, end, note) in quantized.iter().rev() {
        let next = next_onset_of_pitch[note.pitch as usize];
        let end = end.max(start + 1).min(next);
        if end > start {
            timed.push((start, true, note.pitch, note.velocity));
            timed.push((end, false, note.pitch, 0));
        }
        next_onset_of_pitch[note.pitch as usize] = start;
    }
    timed.sort_unstable();

    let mut ids = Vec::with_capacity(timed.len() * 2);
    let mut now = 0u64;
    let mut current_bin: Option<u8> = None;
    for (step, onset, pitch, velocity) in timed {
        push_time_shift(&mut ids, step - now);
        now = step;
        if onset {
            let bin = velocity_bin(velocity);
            if current_bin != Some(bin) {
                ids.push(Event::Velocity(bin).id());
                current_bin = Some(bin);
            }
            ids.push(Event::NoteOn(pitch).id());
        } else {
            ids.push(Event::NoteOff(pitch).id());
        }
    }
    ids
}

/// START, the events, END: one whole piece as the corpus stores it.
pub fn encode_piece(perf: &Performance) -> Vec<u16> {
    let mut ids = vec![START];
    ids.extend(encode(perf));
    ids.push(END);
    ids
}

fn push_time_shift(ids: &mut Vec<u16>, mut steps: u64) {
    while steps > 0 {
        let k = steps.min(MAX_SHIFT_STEPS as u64);
        ids.push(Event::TimeShift(k as u32).id());
        steps -= k;
    }
}

/// Incremental decoder: feed ids one at a time (as a generator produces them) and read the notes
/// so far. Any id sequence decodes to a valid performance: unknown ids and unmatched NOTE_OFFs are
/// ignored, a NOTE_ON of a sounding pitch re-strikes it, and decoding stops at END.
#[derive(Clone, Debug)]
pub struct Decoder {
    steps: u64,
    velocity: u8,
    open: [Option<(u64, u8)>; 128],
    notes: Vec<Note>,
    ended: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            steps: 0,
            velocity: 64,
            open: [None; 128],
            notes: Vec::new(),
            ended: false,
        }
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one id; returns the note it completed, if any.
    pub fn push(&mut self, id: u16) -> Option<Note> {
        if self.ended {
            return None;
        }
        match Event::from_id(id)? {
            Event::NoteOn(pitch) => {
                let finished = self.close(pitch);
                self.open[pitch as usize] = Some((self.steps, self.velocity));
                finished
            }
            Event::NoteOff(pitch) => self.close(pitch),
            Event::TimeShift(k) => {
                self.steps += k as u64;
                None
            }
            Event::Velocity(bin) => {
                self.velocity = bin_velocity(bin);
                None
            }
            Event::Start => None,
            Event::End => {
                self.ended = true;
                None
            }
        }
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The current time in seconds.
    pub fn time(&self) -> f64 {
        self.steps as f64 / STEPS_PER_SECOND
    }

    /// Notes completed so far, in the order they ended.
    pub fn notes(&self) -> &[Note] {
        &self.notes
    }

    /// Notes still sounding, as (pitch, velocity, start seconds).
    pub fn open_notes(&self) -> impl Iterator<Item = (u8, u8, f64)> + '_ {
        self.open.iter().enumerate().filter_map(|(pitch, o)| {
            o.map(|(start, vel)| (pitch as u8, vel, start as f64 / STEPS_PER_SECOND))
        })
    }

    fn close(&mut self, pitch: u8) -> Option<Note> {
        let (start, velocity) = self.open[pitch as usize].take()?;
        if self.steps == start {
            return None;
        }
        let note = Note {
            pitch,
            velocity,
            start: start as f64 / STEPS_PER_SECOND,
            end: self.steps as f64 / STEPS_PER_SECOND,
        };
        self.notes.push(note);
        Some(note)
    }

    /// Ends notes still sounding at the current time, at most [`MAX_OPEN_NOTE_SECONDS`] after
    /// their onset and at least one step long, and returns the performance.
    pub fn finish(mut self) -> Performance {
        let now = self.time();
        for (pitch, velocity, start) in self.open_notes().collect::<Vec<_>>() {
            let end = now.clamp(
                start + 1.0 / STEPS_PER_SECOND,
                start + MAX_OPEN_NOTE_SECONDS,
            );
            self.notes.push(Note {
                pitch,
                velocity,
                start,
                end,
            });
        }
        Performance::from_notes(self.notes)
    }
}

/// Decodes any id sequence into a valid performance (see [`Decoder`]).
pub fn decode(ids: &[u16]) -> Performance {
    let mut decoder = Decoder::new();
    for &id in ids {
        decoder.push(id);
    }
    decoder.finish()
}

/// Shifts every NOTE_ON/NOTE_OFF by `semitones`; `None` when a note would leave 0..=127.
pub fn transpose(ids: &[u16], semitones: i32) -> Option<Vec<u16>> {
    ids.iter()
        .map(|&id| match Event::from_id(id) {
            Some(Event::NoteOn(p)) => shifted(p, semitones).map(|p| Event::NoteOn(p).id()),
            Some(Event::NoteOff(p)) => shifted(p, semitones).map(|p| Event::NoteOff(p).id()),
            _ => Some(id),
        })
        .collect()
}

fn shifted(pitch: u8, semitones: i32) -> Option<u8> {
    u8::try_from(pitch as i32 + semitones)
        .ok()
        .filter(|&p| p <= 127)
}

/// Scales every gap between events by `factor`, re-rounded to the 10 ms grid (rounding is done on
/// absolute times, so errors do not accumulate).
pub fn time_stretch(ids: &[u16], factor: f64) -> Vec<u16> {
    let mut out = Vec::with_capacity(ids.len() + ids.len() / 16);
    let mut steps_in = 0u64;
    let mut steps_out = 0u64;
    for &id in ids {
        match Event::from_id(id) {
            Some(Event::TimeShift(k)) => steps_in += k as u64,
            _ => {
                let target = (steps_in as f64 * factor).round() as u64;
                push_time_shift(&mut out, target.saturating_sub(steps_out));
                steps_out = steps_out.max(target);
                out.push(id);
            }
        }
    }
    let target = (steps_in as f64 * factor).round() as u64;
    push_time_shift(&mut out, target.saturating_sub(steps_out));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_documented_order() {
        let perf = Performance::from_notes(vec![
            Note::new(64, 80, 0.0, 0.5),
            Note::new(60, 80, 0.0, 1.5),
            Note::new(67, 20, 0.5, 1.5),
        ]);
        let ids = encode(&perf);
        let expect = vec![
            Event::Velocity(velocity_bin(80)),
            Event::NoteOn(60),
            Event::NoteOn(64),
            Event::TimeShift(50),
            Event::NoteOff(64),
            Event::Velocity(velocity_bin(20)),
            Event::NoteOn(67),
            Event::TimeShift(100),
            Event::NoteOff(60),
            Event::NoteOff(67),
        ];
        assert_eq!(ids, expect.iter().map(|e| e.id()).collect::<Vec<_>>());
    }

    #[test]
    fn velocity_bins_cover_the_range() {
        assert_eq!(velocity_bin(1), 0);
        assert_eq!(velocity_bin(4), 0);
        assert_eq!(velocity_bin(5), 1);
        assert_eq!(velocity_bin(127), 31);
        for bin in 0..VELOCITY_BINS {
            assert_eq!(velocity_bin(bin_velocity(bin)), bin);
        }
    }

    #[test]
    fn decoding_is_total() {
        let ids = [
            Event::NoteOff(60).id(),
            Event::NoteOn(60).id(),
            Event::NoteOn(60).id(),
            999,
            Event::TimeShift(10).id(),
            Event::NoteOn(61).id(),
        ];
        let perf = decode(&ids);
        assert_eq!(
            perf.notes,
            vec![Note::new(60, 64, 0.0, 0.1), Note::new(61, 64, 0.1, 0.11)]
        );
    }

    #[test]
    fn notes_left_open_last_at_most_five_seconds() {
        let mut ids = vec![Event::NoteOn(60).id()];
        ids.extend(std::iter::repeat_n(Event::TimeShift(100).id(), 8));
        let perf = decode(&ids);
        assert_eq!(perf.notes[0].end, 5.0);
    }

    #[test]
    fn decoding_stops_at_end() {
        let ids = [
            Event::NoteOn(60).id(),
            Event::TimeShift(10).id(),
            END,
            Event::NoteOn(62).id(),
        ];
        assert_eq!(decode(&ids).notes, vec![Note::new(60, 64, 0.0, 0.1)]);
    }

    #[test]
    fn transpose_refuses_to_leave_the_keyboard() {
        let ids = [Event::NoteOn(125).id(), Event::NoteOff(125).id()];
        assert_eq!(
            transpose(&ids, 2),
            Some(vec![Event::NoteOn(127).id(), Event::NoteOff(127).id()])
        );
        assert_eq!(transpose(&ids, 3), None);
    }

    #[test]
    fn time_stretch_scales_absolute_times() {
        let perf = Performance::from_notes(vec![Note::new(60, 64, 1.0, 3.0)]);
        let stretched = decode(&time_stretch(&encode(&perf), 1.05));
        assert_eq!(stretched.notes.len(), 1);
        assert!((stretched.notes[0].start - 1.05).abs() < 1e-9);
        assert!((stretched.notes[0].end - 3.15).abs() < 1e-9);
    }
}
