//! Hostile and broken files: each gives an error or a valid result, never a panic, and bounded
//! work: the memory a parse holds is measured (a counting allocator), not the time it takes.

mod common;

use common::peak_alloc::{ONE_AT_A_TIME, PeakCounting, peak_bytes_of};
use common::*;
use echoai::midi::parse_midi;

#[global_allocator]
static ALLOCATOR: PeakCounting = PeakCounting;

/// What one parse may hold: the events it read (midly's and ours, under 100 bytes per input byte
/// even for 2-byte events) and the notes, plus 64 KiB of fixed state.
fn allowed_bytes(input: usize) -> usize {
    64 * 1024 + 100 * input
}

fn survives(name: &str, bytes: &[u8]) -> Result<usize, String> {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (result, peak) = peak_bytes_of(|| std::panic::catch_unwind(|| parse_midi(bytes)));
    assert!(
        peak <= allowed_bytes(bytes.len()),
        "{name}: {peak} bytes held for a {}-byte file",
        bytes.len()
    );
    match result {
        Err(_) => panic!("{name}: the parser panicked"),
        Ok(Ok(perf)) => {
            for n in &perf.notes {
                assert!(
                    n.end > n.start && n.start >= 0.0 && n.end.is_finite(),
                    "{name}: {n:?}"
                );
                assert!(
                    n.pitch <= 127 && (1..=127).contains(&n.velocity),
                    "{name}: {n:?}"
                );
            }
            Ok(perf.len())
        }
        Ok(Err(e)) => {
            assert!(!e.to_string().is_empty());
            Err(e.to_string())
        }
    }
}

fn one_note() -> Vec<u8> {
    track(&cat(&[ev(0, &[0x90, 60, 80]), ev(96, &[0x80, 60, 0])]))
}

#[test]
fn empty_file_is_an_error() {
    let err = survives("empty", &[]).unwrap_err();
    assert!(err.contains("not a valid Standard MIDI File"), "{err}");
}

#[test]
fn truncated_header_is_an_error() {
    let full = smf(0, 96, &[one_note()]);
    let err = survives("truncated header", &full[..10]).unwrap_err();
    assert!(err.contains("not a valid Standard MIDI File"), "{err}");
}

#[test]
fn truncated_track_does_not_panic() {
    let full = smf(0, 96, &[one_note()]);
    for cut in 14..full.len() {
        let _ = survives("truncated track", &full[..cut]);
    }
}

#[test]
fn random_bytes_do_not_panic() {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..300 {
        let len = (next() % 400) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Half of them get a valid header so the track parser is exercised too.
        if next() % 2 == 0 {
            let mut head = smf(1, 96, &[]);
            head[10..12].copy_from_slice(&2u16.to_be_bytes());
            head.extend_from_slice(b"MTrk");
            head.extend_from_slice(&(len as u32).to_be_bytes());
            head.extend(bytes);
            bytes = head;
        }
        let _ = survives("random", &bytes);
    }
}

#[test]
fn huge_chunk_length_is_not_an_allocation() {
    let mut bytes = smf(0, 96, &[]);
    bytes[10..12].copy_from_slice(&1u16.to_be_bytes());
    bytes.extend_from_slice(b"MTrk");
    bytes.extend_from_slice(&(1u32 << 31).to_be_bytes());
    bytes.extend(std::iter::repeat_n(0u8, 30_000));
    // `survives` bounds what the parse held by the file's size (3 MB here), not the 2 GiB the
    // chunk header claims.
    let _ = survives("2^31 chunk length", &bytes);
}

#[test]
fn an_smpte_rate_of_minus_128_is_an_error_not_a_panic() {
    // Found by tests/fuzz.rs: midly negates the rate byte as an i8, which overflows for 0x80
    // (a panic in debug builds).
    for division in [0x8000u16, 0x8001, 0x80FF] {
        let err = survives("SMPTE -128", &smf(0, division, &[one_note()])).unwrap_err();
        assert!(err.contains("frame rate"), "{err}");
    }
}

#[test]
fn zero_ticks_per_quarter_is_an_error() {
    let err = survives("0 tpq", &smf(0, 0, &[one_note()])).unwrap_err();
    assert!(err.contains("0 ticks per quarter"), "{err}");
}

#[test]
fn zero_tempo_is_ignored() {
    let t = track(&cat(&[
        tempo(0, 0),
        ev(0, &[0x90, 60, 80]),
        ev(96, &[0x80, 60, 0]),
    ]));
    assert_eq!(survives("tempo 0", &smf(0, 96, &[t])), Ok(1));
}

#[test]
fn note_never_released_ends_at_the_last_event() {
    let t = track(&cat(&[
        ev(0, &[0x90, 60, 80]),
        ev(96, &[0x90, 62, 80]),
        ev(96, &[0x80, 62, 0]),
    ]));
    let perf = parse_midi(&smf(0, 96, &[t])).unwrap();
    assert_eq!(perf.len(), 2);
    assert!((perf.notes[0].end - 1.0).abs() < 1e-9);
}

#[test]
fn huge_delta_time_is_handled() {
    let max_delta = (1u32 << 28) - 1;
    let t = track(&cat(&[
        ev(0, &[0x90, 60, 80]),
        ev(max_delta, &[0x80, 60, 0]),
        ev(0, &[0x90, 61, 80]),
        ev(1, &[0x80, 61, 0]),
    ]));
    // At 120 BPM and 1 tick per quarter, 2^28 ticks are about 4 years: refused as corrupt.
    let err = survives("2^28 delta", &smf(0, 1, std::slice::from_ref(&t))).unwrap_err();
    assert!(err.contains("later than"), "{err}");
    // At 30000 ticks per quarter it is 74 minutes: a valid, long note.
    assert_eq!(survives("2^28 delta, fine", &smf(0, 30_000, &[t])), Ok(2));
}
