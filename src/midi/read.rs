//! Reading any Standard MIDI File into a [`Performance`].

use std::io::Read;
use std::path::Path;

use midly::{Format, MetaMessage, MidiMessage, Smf, TrackEvent, TrackEventKind};

use super::notes::NoteTracker;
use super::tempo::TempoMap;
use super::{MidiError, MidiErrorKind};
use crate::performance::{Note, Performance};

/// Larger files are refused before they are read: the largest MAESTRO file is under 1 MB. The
/// bound also bounds memory: an event takes at least 2 bytes of the file, and midly's event
/// (24 bytes), our timeline entry (40 bytes) and a note (24 bytes) each hold at most one per
/// event, so a file of this size needs at most about 16 MiB / 2 x 88 B = 740 MB while parsing.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Every time in a piece is bounded by this: a note starting later is taken as a corrupt file,
/// and a note, pedal or unreleased key that would end later ends here. A hostile delta time could
/// otherwise place a note-off years into the piece and make the tokenizer emit billions of time
/// shifts (a 44-byte file once asked for more than 4 GB).
pub const MAX_PIECE_SECONDS: f64 = 6.0 * 3600.0;

/// Reads a MIDI file from disk. The error names the file.
pub fn read_midi(path: &Path) -> Result<Performance, MidiError> {
    read_midi_with_tempo(path).map(|(perf, _)| perf)
}

/// As [`read_midi`], with the file's first tempo (see [`tempo_bpm`]), from one read of the file.
pub fn read_midi_with_tempo(path: &Path) -> Result<(Performance, Option<f64>), MidiError> {
    let bytes = read_bounded(path).map_err(|e| MidiError::new(e).at(path))?;
    let perf = parse_midi(&bytes).map_err(|e| e.at(path))?;
    Ok((perf, tempo_bpm(&bytes)))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, MidiErrorKind> {
    // Before opening: opening a FIFO waits for a writer, forever.
    if !std::fs::metadata(path)?.is_file() {
        return Err(MidiErrorKind::NotAFile);
    }
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
    let smf = parse_smf(bytes)?;
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
    Ok(Performance::from_notes(notes))
}

/// midly's parse, made total: midly 0.5.3 negates the SMPTE frame-rate byte as an `i8`, which
/// overflows (a panic in debug builds) for the division word 0x80xx, so that header is refused
/// first; and any other panic inside the parser becomes an error for this file, never a crash.
fn parse_smf(bytes: &[u8]) -> Result<Smf<'_>, MidiErrorKind> {
    if bytes.len() >= 14 && &bytes[..4] == b"MThd" && bytes[12] == 0x80 {
        return Err(MidiErrorKind::Parse(
            "the header gives an SMPTE frame rate of -128".into(),
        ));
    }
    match std::panic::catch_unwind(|| Smf::parse(bytes)) {
        Ok(Ok(smf)) => Ok(smf),
        Ok(Err(e)) => Err(MidiErrorKind::Parse(e.to_string())),
        Err(_) => Err(MidiErrorKind::Parse(
            "the MIDI parser failed on this file".into(),
        )),
    }
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
    let mut tracker = NoteTracker::new();
    let mut last_time = offset;
    for (i, event) in events.iter().enumerate() {
        let time = offset + map.seconds(event.tick);
        if past_the_bound(time) {
            // An onset past the bound means a corrupt file; releases past it are clipped there,
            // because every key still down is ended at the bound below.
            if let Some(late) = events[i..]
                .iter()
                .filter(|e| is_onset(&e.kind))
                .map(|e| offset + map.seconds(e.tick))
                .find(|&t| past_the_bound(t))
            {
                return Err(MidiErrorKind::TooLong {
                    seconds: late,
                    limit: MAX_PIECE_SECONDS,
                }
                .into());
            }
            last_time = MAX_PIECE_SECONDS;
            break;
        }
        last_time = time;
        if let TrackEventKind::Midi { channel, message } = event.kind {
            tracker.handle(channel.as_int(), message, time);
        }
    }
    notes.extend(tracker.finish(last_time));
    Ok(last_time)
}

/// NaN counts as past: a time that is not a number bounds nothing.
fn past_the_bound(seconds: f64) -> bool {
    seconds.is_nan() || seconds > MAX_PIECE_SECONDS
}

fn is_onset(kind: &TrackEventKind) -> bool {
    matches!(kind, TrackEventKind::Midi { message: MidiMessage::NoteOn { vel, .. }, .. } if vel.as_int() > 0)
}

/// The first tempo of a metrical file in quarter notes per minute (for drawing bars), if any.
pub fn tempo_bpm(bytes: &[u8]) -> Option<f64> {
    let smf = parse_smf(bytes).ok()?;
    if !matches!(smf.header.timing, midly::Timing::Metrical(_)) {
        return None;
    }
    smf.tracks
        .iter()
        .flat_map(|t| {
            let mut tick = 0u64;
            t.iter().filter_map(move |e| {
                tick += e.delta.as_int() as u64;
                match e.kind {
                    TrackEventKind::Meta(MetaMessage::Tempo(us)) if us.as_int() > 0 => {
                        Some((tick, 60e6 / us.as_int() as f64))
                    }
                    _ => None,
                }
            })
        })
        .min_by_key(|(tick, _)| *tick)
        .map(|(_, bpm)| bpm)
}
