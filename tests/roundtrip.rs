//! Round trips between performances, events and MIDI files.

use echoai::midi::{midi_bytes, parse_midi, read_midi};
use echoai::performance::{Note, Performance};
use echoai::tokenizer::{decode, encode, encode_piece, velocity_bin};
use proptest::prelude::*;

/// Random performances whose notes last at least 20 ms (shorter ones cannot survive a 10 ms grid).
fn performance() -> impl Strategy<Value = Performance> {
    prop::collection::vec((0u8..128, 1u8..128, 0.0f64..30.0, 0.02f64..6.0), 0..120).prop_map(
        |raw| {
            Performance::from_notes(
                raw.into_iter()
                    .map(|(pitch, velocity, start, dur)| Note {
                        pitch,
                        velocity,
                        start,
                        end: start + dur,
                    })
                    .collect(),
            )
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn events_to_performance_to_events_is_identity_on_canonical_sequences(perf in performance()) {
        let canonical = encode(&perf);
        prop_assert_eq!(encode(&decode(&canonical)), canonical.clone());
        let piece = encode_piece(&perf);
        prop_assert_eq!(encode_piece(&decode(&piece)), piece);
    }

    #[test]
    fn performance_to_events_keeps_every_note_to_10ms(perf in performance()) {
        let back = decode(&encode(&perf));
        // Notes only shorten where a same-pitch note follows within the rounding.
        let survivors: Vec<&Note> = perf.notes.iter().filter(|n| {
            !perf.notes.iter().any(|m| m.pitch == n.pitch && m.start > n.start && m.start - n.end < 0.01)
        }).collect();
        prop_assert!(back.len() <= perf.len());
        for n in survivors {
            let found = back.notes.iter().find(|m| m.pitch == n.pitch && (m.start - n.start).abs() <= 0.005 + 1e-9);
            prop_assert!(found.is_some(), "lost {:?}", n);
            let m = found.unwrap();
            prop_assert!((m.end - n.end).abs() <= 0.005 + 1e-9, "{:?} -> {:?}", n, m);
            prop_assert_eq!(velocity_bin(m.velocity), velocity_bin(n.velocity));
        }
    }

    #[test]
    fn write_then_read_gives_the_same_notes(perf in performance()) {
        let on_grid = decode(&encode(&perf));
        let back = parse_midi(&midi_bytes(&on_grid).unwrap()).unwrap();
        prop_assert_eq!(back.len(), on_grid.len());
        for (a, b) in on_grid.notes.iter().zip(&back.notes) {
            prop_assert_eq!((a.pitch, a.velocity), (b.pitch, b.velocity));
            prop_assert!((a.start - b.start).abs() < 1e-9 && (a.end - b.end).abs() < 1e-9, "{:?} {:?}", a, b);
        }
    }
}

#[test]
fn convert_keeps_every_corpus_file_note_count_and_duration() {
    let files = echoai::corpus::scan_midi_files(std::path::Path::new("assets/corpus")).unwrap();
    assert!(files.len() > 400);
    let mut changed = Vec::new();
    for path in &files {
        let perf = read_midi(path).unwrap();
        let bytes = midi_bytes(&decode(&encode(&perf))).unwrap();
        let back = parse_midi(&bytes).unwrap();
        let duration_ok = (back.end_time() - perf.end_time()).abs() <= 0.01;
        if back.len() != perf.len() || !duration_ok {
            changed.push(format!(
                "{}: {} -> {} notes, {:.3} -> {:.3} s",
                path.display(),
                perf.len(),
                back.len(),
                perf.end_time(),
                back.end_time()
            ));
        }
    }
    assert!(changed.is_empty(), "{}", changed.join("\n"));
}
