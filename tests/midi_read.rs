//! Reading the features of the Standard MIDI File format, each from a small file built here.

mod common;

use common::*;
use echoai::midi::parse_midi;
use echoai::performance::Note;

fn notes(bytes: &[u8]) -> Vec<Note> {
    parse_midi(bytes).expect("valid file").notes
}

#[test]
fn format_0_with_running_status() {
    // 96 ticks per quarter at the default 120 BPM: 1 tick = 1/192 s.
    let t = track(&cat(&[
        ev(0, &[0x90, 60, 100]),
        ev(0, &[64, 90]), // running status: another note-on
        ev(96, &[60, 0]), // velocity 0 = note-off, still running status
        ev(96, &[64, 0]),
    ]));
    let got = notes(&smf(0, 96, &[t]));
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].pitch, got[0].velocity), (60, 100));
    assert_close(got[0].end, 0.5, "C end");
    assert_eq!((got[1].pitch, got[1].velocity), (64, 90));
    assert_close(got[1].end, 1.0, "E end");
}

#[test]
fn format_1_tempo_change_on_a_later_track_applies_to_all() {
    let conductor = track(&cat(&[tempo(0, 500_000), tempo(192, 1_000_000)]));
    let piano = track(&cat(&[ev(0, &[0x90, 60, 80]), ev(384, &[0x80, 60, 0])]));
    // The tempo change sits on a third track, after the piano track: it must still apply.
    let late_tempo = track(&tempo(288, 250_000));
    let got = notes(&smf(1, 96, &[conductor, piano, late_tempo]));
    // 0..192 ticks at 0.5 s/quarter = 1.0 s; 192..288 at 1 s/quarter = 1.0 s; 288..384 at 0.25 = 0.25 s.
    assert_eq!(got.len(), 1);
    assert_close(got[0].end, 2.25, "end after two tempo changes");
}

#[test]
fn smpte_division_ignores_tempo() {
    // -25 fps, 40 ticks per frame: 1000 ticks per second.
    let division = ((-25i8 as u8 as u16) << 8) | 40;
    let t = track(&cat(&[
        tempo(0, 1_000_000),
        ev(500, &[0x90, 70, 64]),
        ev(250, &[0x80, 70, 64]),
    ]));
    let got = notes(&smf(0, division, &[t]));
    assert_close(got[0].start, 0.5, "start");
    assert_close(got[0].end, 0.75, "end");
}

#[test]
fn sustain_pedal_extends_notes_to_the_release() {
    let t = track(&cat(&[
        ev(0, &[0xb0, 64, 127]), // pedal down
        ev(0, &[0x90, 60, 80]),
        ev(96, &[0x80, 60, 0]), // key up at 0.5 s, pedal still down
        ev(96, &[0x90, 62, 80]),
        ev(96, &[0x80, 62, 0]),
        ev(96, &[0xb0, 64, 0]), // pedal up at 2.0 s
        ev(0, &[0x90, 64, 80]),
        ev(96, &[0x80, 64, 0]),
    ]));
    let got = notes(&smf(0, 96, &[t]));
    assert_eq!(got.len(), 3);
    assert_close(got[0].end, 2.0, "C held by the pedal");
    assert_close(got[1].end, 2.0, "D held by the pedal");
    assert_close(got[2].end, 2.5, "E after the pedal");
}

#[test]
fn restrike_under_pedal_ends_the_earlier_note() {
    let t = track(&cat(&[
        ev(0, &[0xb0, 64, 100]),
        ev(0, &[0x90, 60, 80]),
        ev(48, &[0x80, 60, 0]),
        ev(48, &[0x90, 60, 70]), // struck again at 0.5 s while sustained
        ev(96, &[0x80, 60, 0]),
        ev(96, &[0xb0, 64, 0]), // release at 1.5 s
    ]));
    let got = notes(&smf(0, 96, &[t]));
    assert_eq!(got.len(), 2);
    assert_close(got[0].end, 0.5, "first strike ends at the second");
    assert_eq!(got[1].velocity, 70);
    assert_close(got[1].end, 1.5, "second strike held to pedal release");
}

#[test]
fn overlapping_same_pitch_notes_on_one_channel() {
    let t = track(&cat(&[
        ev(0, &[0x90, 60, 80]),
        ev(96, &[0x90, 60, 90]),
        ev(96, &[0x80, 60, 0]),
        ev(96, &[0x80, 60, 0]), // unmatched: ignored
    ]));
    let got = notes(&smf(0, 96, &[t]));
    assert_eq!(got.len(), 2);
    assert_close(got[0].end, 0.5, "first");
    assert_close(got[1].start, 0.5, "second start");
    assert_close(got[1].end, 1.0, "second end");
}

#[test]
fn drum_channel_is_dropped_other_channels_kept() {
    let t = track(&cat(&[
        ev(0, &[0x99, 36, 100]),
        ev(0, &[0x93, 50, 100]),
        ev(96, &[0x89, 36, 0]),
        ev(0, &[0x83, 50, 0]),
    ]));
    let got = notes(&smf(0, 96, &[t]));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].pitch, 50);
}

#[test]
fn note_off_before_note_on_at_the_same_tick_is_a_restrike() {
    // The new note-on is written before the old note-off at the same tick.
    let t = track(&cat(&[
        ev(0, &[0x90, 60, 80]),
        ev(96, &[0x90, 60, 81]),
        ev(0, &[0x80, 60, 0]),
        ev(96, &[0x80, 60, 0]),
    ]));
    let got = notes(&smf(0, 96, &[t]));
    assert_eq!(got.len(), 2, "{got:?}");
    assert_close(got[1].end, 1.0, "second note keeps its length");
}

#[test]
fn format_2_patterns_play_one_after_another() {
    let a = track(&cat(&[ev(0, &[0x90, 60, 80]), ev(192, &[0x80, 60, 0])]));
    let b = track(&cat(&[ev(0, &[0x90, 62, 80]), ev(192, &[0x80, 62, 0])]));
    let got = notes(&smf(2, 96, &[a, b]));
    assert_eq!(got.len(), 2);
    assert_close(got[1].start, 1.0, "second pattern starts after the first");
}
