//! Live MIDI through the fake ports: scheduling, silencing, recording.

use std::time::{Duration, Instant};

use echoai::live_midi::{
    FakeMidiIn, FakeMidiOut, MidiOut, MidiRecorder, MidiScheduler, PortChoice, record,
};
use echoai::performance::{Note, Performance};

fn piece() -> Performance {
    Performance::from_notes(
        (0..12)
            .map(|i| Note {
                pitch: 60 + i as u8,
                velocity: 70,
                start: i as f64 * 0.05,
                end: i as f64 * 0.05 + 0.12,
            })
            .collect(),
    )
}

fn messages(out: &FakeMidiOut) -> Vec<(Instant, Vec<u8>)> {
    out.log.lock().unwrap().clone()
}

fn all_notes_off_count(log: &[(Instant, Vec<u8>)]) -> usize {
    log.iter()
        .filter(|(_, m)| m.as_slice() == [0xB0, 123, 0])
        .count()
}

#[test]
fn every_event_is_sent_in_order_and_on_time() {
    let out = FakeMidiOut::default();
    let perf = piece();
    let scheduler = MidiScheduler::new(
        &perf,
        out.connect(&PortChoice::Virtual("t".into())).unwrap(),
    );
    let started = Instant::now();
    scheduler.play();
    std::thread::sleep(Duration::from_millis(800));
    drop(scheduler);
    let log = messages(&out);
    let notes: Vec<&(Instant, Vec<u8>)> = log.iter().filter(|(_, m)| m[0] & 0xF0 != 0xB0).collect();
    // Expected: (time, status, pitch) in time order, releases before onsets at one time.
    let mut expected: Vec<(f64, u8, u8)> = perf
        .notes
        .iter()
        .flat_map(|n| [(n.start, 0x90, n.pitch), (n.end, 0x80, n.pitch)])
        .collect();
    expected.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    assert_eq!(notes.len(), expected.len());
    // Times are measured from the first message, so the thread's start-up (a few ms on a busy
    // machine, the same for every event) is not counted as timing error.
    let first_sent = notes[0].0;
    let first_expected = expected[0].0;
    let mut errors = Vec::new();
    for ((at, message), (time, status, pitch)) in notes.iter().zip(&expected) {
        assert_eq!((message[0], message[1]), (*status, *pitch));
        let offset = at.duration_since(first_sent).as_secs_f64();
        errors.push((offset - (time - first_expected)).abs());
    }
    let start_latency = first_sent.duration_since(started).as_secs_f64();
    // The scheduler waits for absolute deadlines: the typical event is within 2 ms and lateness
    // never accumulates. (The worst single wake-up depends on how busy the machine is, so it gets
    // a loose bound; a scheduler that drifted would exceed it within 800 ms.)
    errors.sort_by(f64::total_cmp);
    let (median, worst) = (errors[errors.len() / 2], errors[errors.len() - 1]);
    eprintln!(
        "start {:.2} ms, timing error median {:.2} ms, worst {:.2} ms",
        start_latency * 1e3,
        median * 1e3,
        worst * 1e3
    );
    assert!(
        start_latency < 0.05,
        "first event after {:.1} ms",
        start_latency * 1e3
    );
    assert!(median < 0.002, "median timing error {:.2} ms", median * 1e3);
    assert!(worst < 0.025, "worst timing error {:.2} ms", worst * 1e3);
    assert!(all_notes_off_count(&log) >= 1, "drop sends all-notes-off");
}

#[test]
fn stop_seek_and_drop_silence_the_port_and_pause_holds_notes_off() {
    let out = FakeMidiOut::default();
    let scheduler = MidiScheduler::new(
        &piece(),
        out.connect(&PortChoice::Virtual("t".into())).unwrap(),
    );
    scheduler.play();
    std::thread::sleep(Duration::from_millis(75)); // notes 60 and 61 sound
    scheduler.pause();
    std::thread::sleep(Duration::from_millis(150));
    let log = messages(&out);
    let pause_at = log
        .iter()
        .position(|(_, m)| m.as_slice() == [0xB0, 123, 0])
        .expect("pause silences");
    let released: Vec<u8> = log[..pause_at]
        .iter()
        .filter(|(_, m)| m[0] == 0x80)
        .map(|(_, m)| m[1])
        .collect();
    let struck: Vec<u8> = log[..pause_at]
        .iter()
        .filter(|(_, m)| m[0] == 0x90)
        .map(|(_, m)| m[1])
        .collect();
    assert!(!struck.is_empty());
    assert_eq!(
        released.len(),
        struck.len(),
        "every struck note is released by the pause"
    );
    assert_eq!(log.len(), pause_at + 1, "nothing is sent while paused");

    scheduler.play();
    std::thread::sleep(Duration::from_millis(60));
    scheduler.seek(0.3);
    std::thread::sleep(Duration::from_millis(20));
    let after_seek = all_notes_off_count(&messages(&out));
    assert_eq!(after_seek, 2, "seek silences");
    scheduler.stop();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(all_notes_off_count(&messages(&out)), 3, "stop silences");
    drop(scheduler);
    assert_eq!(all_notes_off_count(&messages(&out)), 4, "drop silences");
}

#[test]
fn recording_folds_the_pedal_and_starts_at_zero() {
    let input = FakeMidiIn {
        port_names: vec!["Keyboard".into()],
        script: vec![
            (5_000_000, vec![0xB0, 64, 127]),
            (5_000_000, vec![0x90, 60, 90]),
            (5_500_000, vec![0x80, 60, 0]),
            (6_000_000, vec![0x90, 64, 80]),
            (6_250_000, vec![0x90, 64, 0]),
            (7_000_000, vec![0xB0, 64, 0]),
            (7_000_000, vec![0xF8]), // clock: ignored
        ],
    };
    let perf = record(&input, &PortChoice::Name("key".into()), 0.0).unwrap();
    assert_eq!(perf.len(), 2);
    assert_eq!(perf.notes[0].start, 0.0);
    assert_eq!(perf.notes[0].end, 2.0);
    assert_eq!(perf.notes[1].start, 1.0);
    assert_eq!(perf.notes[1].end, 2.0);
    assert!(record(&input, &PortChoice::Name("drum machine".into()), 0.0).is_err());
    let mut recorder = MidiRecorder::new();
    recorder.push(0, &[0x99, 36, 100]); // drums are not piano
    assert!(recorder.finish().is_empty());
}

#[test]
fn ports_resolve_by_index_name_or_part_of_a_name() {
    let names = vec!["Midi Through".to_string(), "USB Piano 1".to_string()];
    assert_eq!(PortChoice::parse("1").resolve(&names).unwrap(), 1);
    assert_eq!(PortChoice::parse("usb piano").resolve(&names).unwrap(), 1);
    assert_eq!(
        PortChoice::parse("Midi Through").resolve(&names).unwrap(),
        0
    );
    assert!(PortChoice::parse("7").resolve(&names).is_err());
}
