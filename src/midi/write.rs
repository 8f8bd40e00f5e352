//! Writing a [`Performance`] as a Standard MIDI File a DAW opens.

use std::path::Path;

use midly::num::{u4, u7, u15, u24, u28};
use midly::{Format, Header, MetaMessage, MidiMessage, Smf, Timing, TrackEvent, TrackEventKind};

use super::{MidiError, MidiErrorKind};
use crate::performance::Performance;

/// 500 ticks per quarter at 120 BPM make one tick exactly one millisecond, so the tokenizer's 10 ms
/// grid survives a write and a read without rounding, and a DAW shows the DAW's default tempo.
pub const TICKS_PER_QUARTER: u16 = 500;
pub const WRITE_TEMPO_US_PER_QUARTER: u32 = 500_000;
const SECONDS_PER_TICK: f64 = WRITE_TEMPO_US_PER_QUARTER as f64 / 1e6 / TICKS_PER_QUARTER as f64;
const PIANO_CHANNEL: u8 = 0;

/// The bytes of a format-1 file: a tempo track and one piano track (program 0).
pub fn midi_bytes(perf: &Performance) -> Result<Vec<u8>, MidiError> {
    let mut timed: Vec<(u64, bool, u8, u8)> = Vec::with_capacity(perf.notes.len() * 2);
    for n in &perf.notes {
        let start = to_tick(n.start);
        let end = to_tick(n.end).max(start + 1);
        timed.push((start, true, n.pitch, n.velocity));
        timed.push((end, false, n.pitch, 0));
    }
    smf_bytes(
        timed,
        TICKS_PER_QUARTER,
        WRITE_TEMPO_US_PER_QUARTER,
        b"Piano",
    )
}

/// A format-1 file from `(tick, is_onset, pitch, velocity)` note edges in any order: a tempo
/// track (`us_per_quarter`, 4/4) and one piano track named `track_name`.
pub(super) fn smf_bytes(
    timed: Vec<(u64, bool, u8, u8)>,
    ticks_per_quarter: u16,
    us_per_quarter: u32,
    track_name: &[u8],
) -> Result<Vec<u8>, MidiError> {
    let header = Header::new(
        Format::Parallel,
        Timing::Metrical(u15::new(ticks_per_quarter)),
    );
    let mut smf = Smf::new(header);
    smf.tracks.push(vec![
        meta(0, MetaMessage::TrackName(b"EchoAI Studio")),
        meta(0, MetaMessage::Tempo(u24::new(us_per_quarter))),
        meta(0, MetaMessage::TimeSignature(4, 2, 24, 8)),
        meta(0, MetaMessage::EndOfTrack),
    ]);
    smf.tracks.push(piano_track(timed, track_name));
    let mut bytes = Vec::new();
    smf.write_std(&mut bytes)
        .map_err(|e| MidiError::new(MidiErrorKind::Write(e)))?;
    Ok(bytes)
}

/// Writes the file through a temporary sibling and a rename, so an existing file is never left
/// half-written.
pub fn write_midi(perf: &Performance, path: &Path) -> Result<(), MidiError> {
    let bytes = midi_bytes(perf).map_err(|e| e.at(path))?;
    crate::fsutil::write_atomic(path, &bytes)
        .map_err(|e| MidiError::new(MidiErrorKind::Write(e)).at(path))
}

fn meta<'a>(delta: u32, message: MetaMessage<'a>) -> TrackEvent<'a> {
    TrackEvent {
        delta: u28::new(delta),
        kind: TrackEventKind::Meta(message),
    }
}

fn piano_track(mut timed: Vec<(u64, bool, u8, u8)>, name: &[u8]) -> Vec<TrackEvent<'_>> {
    // (tick, is_onset, pitch, velocity): releases sort before onsets at one tick.
    timed.sort_unstable();
    let channel = u4::new(PIANO_CHANNEL);
    let mut track = vec![
        meta(0, MetaMessage::TrackName(name)),
        TrackEvent {
            delta: u28::new(0),
            kind: TrackEventKind::Midi {
                channel,
                message: MidiMessage::ProgramChange {
                    program: u7::new(0),
                },
            },
        },
    ];
    let mut now = 0u64;
    for (tick, onset, pitch, velocity) in timed {
        let delta = tick - now;
        now = tick;
        let key = u7::new(pitch.min(127));
        let message = if onset {
            MidiMessage::NoteOn {
                key,
                vel: u7::new(velocity.clamp(1, 127)),
            }
        } else {
            MidiMessage::NoteOff {
                key,
                vel: u7::new(64),
            }
        };
        push_with_delta(&mut track, delta, TrackEventKind::Midi { channel, message });
    }
    track.push(meta(0, MetaMessage::EndOfTrack));
    track
}

/// A delta time holds 28 bits; longer gaps are bridged with no-op text events.
fn push_with_delta<'a>(track: &mut Vec<TrackEvent<'a>>, mut delta: u64, kind: TrackEventKind<'a>) {
    let max = u28::max_value().as_int() as u64;
    while delta > max {
        track.push(meta(max as u32, MetaMessage::Text(b"")));
        delta -= max;
    }
    track.push(TrackEvent {
        delta: u28::new(delta as u32),
        kind,
    });
}

fn to_tick(seconds: f64) -> u64 {
    (seconds.max(0.0) / SECONDS_PER_TICK).round() as u64
}
