//! Live MIDI through the fake ports: scheduling, silencing, recording.

use std::time::{Duration, Instant};

use echoai::live_midi::{
    Command, FakeMidiIn, FakeMidiOut, MidiOut, MidiRecorder, MidiScheduler, PortChoice, Schedule,
    record,
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

fn all_notes_off_count(log: &[(Instant, Vec<u8>)]) -> usize {
    log.iter()
        .filter(|(_, m)| m.as_slice() == [0xB0, 123, 0])
        .count()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The messages sent so far, without their wall-clock times.
fn sent(out: &FakeMidiOut) -> Vec<Vec<u8>> {
    out.log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, m)| m.clone())
        .collect()
}

#[test]
fn each_event_is_sent_exactly_when_the_clock_reaches_it() {
    let out = FakeMidiOut::default();
    let perf = piece();
    let mut schedule = Schedule::for_performance(
        &perf,
        out.connect(&PortChoice::Virtual("t".into())).unwrap(),
    );
    // Expected: (time, status, pitch) in time order, releases before onsets at one time.
    let mut expected: Vec<(f64, u8, u8)> = perf
        .notes
        .iter()
        .flat_map(|n| [(n.start, 0x90, n.pitch), (n.end, 0x80, n.pitch)])
        .collect();
    expected.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    // Started at clock time 1 s: piece time t is due at 1 s + t.
    let start = Duration::from_secs(1);
    schedule.apply(Command::Play, start);
    let mut count = 0;
    for &(time, status, pitch) in &expected {
        let due = start + Duration::from_secs_f64(time);
        assert_eq!(
            schedule.next_due(),
            Some(due),
            "the deadline the thread waits for"
        );
        schedule.send_due(due - Duration::from_micros(1));
        assert_eq!(sent(&out).len(), count, "nothing before {time} s");
        schedule.send_due(due);
        let log = sent(&out);
        assert!(
            log.len() > count,
            "the event at {time} s is sent at its time"
        );
        assert_eq!(
            log[count],
            vec![status, pitch, if status == 0x90 { 70 } else { 0 }]
        );
        count += 1;
        // Events due at the same instant went out together; skip past them.
        count = count.max(log.len());
    }
    assert_eq!(
        count,
        expected.len() + 1,
        "the notes, then the end's all-notes-off"
    );
    assert_eq!(sent(&out).last().unwrap(), &vec![0xB0, 123, 0]);
    assert!(!schedule.is_playing(), "the end of the piece stops it");
}

#[test]
fn stop_seek_and_drop_silence_the_port_and_pause_holds_notes_off() {
    let out = FakeMidiOut::default();
    let perf = piece();
    let mut schedule = Schedule::for_performance(
        &perf,
        out.connect(&PortChoice::Virtual("t".into())).unwrap(),
    );
    let silences = |out: &FakeMidiOut| all_notes_off_count(&out.log.lock().unwrap());
    schedule.apply(Command::Play, ms(0));
    schedule.send_due(ms(75)); // notes 60 and 61 sound
    assert_eq!(sent(&out), vec![vec![0x90, 60, 70], vec![0x90, 61, 70]]);
    schedule.apply(Command::Pause, ms(75));
    let log = sent(&out);
    assert_eq!(
        &log[2..],
        &[vec![0x80, 60, 0], vec![0x80, 61, 0], vec![0xB0, 123, 0]],
        "every struck note is released by the pause, then all notes off"
    );
    assert!((schedule.position() - 0.075).abs() < 1e-9);
    schedule.send_due(ms(10_000));
    assert_eq!(sent(&out).len(), 5, "nothing is sent while paused");
    assert_eq!(schedule.next_due(), None);

    // Playing again at 10 s continues from 75 ms into the piece: note 62 (at 0.1 s) is due
    // at 10.025 s.
    schedule.apply(Command::Play, ms(10_000));
    let due = ms(10_000) - Duration::from_secs_f64(0.075) + Duration::from_secs_f64(0.1);
    assert!(due.abs_diff(ms(10_025)) < Duration::from_micros(1));
    assert_eq!(schedule.next_due(), Some(due));
    schedule.send_due(due);
    assert_eq!(sent(&out).last().unwrap(), &vec![0x90, 62, 70]);
    schedule.apply(Command::Seek(0.3), ms(10_030));
    assert_eq!(silences(&out), 2, "seek silences");
    assert_eq!(schedule.position(), 0.3);
    // After the seek, the next event is the first at or after 0.3 s.
    let first_after: f64 = perf
        .notes
        .iter()
        .flat_map(|n| [n.start, n.end])
        .filter(|&t| t >= 0.3)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(
        schedule.next_due(),
        Some(ms(10_030) - Duration::from_secs_f64(0.3) + Duration::from_secs_f64(first_after))
    );
    schedule.apply(Command::Stop, ms(10_040));
    assert_eq!(silences(&out), 3, "stop silences");
    assert_eq!(schedule.position(), 0.0);
    schedule.finish();
    assert_eq!(silences(&out), 4, "going away silences");
}

/// One run on the real clock, with bounds loose enough for a loaded machine: the thread sends
/// everything, in order, in about the piece's length, and silences the port when dropped.
#[test]
fn the_scheduler_thread_plays_a_piece_on_the_real_clock() {
    let out = FakeMidiOut::default();
    let perf = piece();
    let scheduler = MidiScheduler::new(
        &perf,
        out.connect(&PortChoice::Virtual("t".into())).unwrap(),
    );
    let started = Instant::now();
    scheduler.play();
    let length = perf.end_time();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent(&out).len() < 2 * perf.len() + 1 && Instant::now() < deadline {
        std::thread::sleep(ms(5));
    }
    let took = started.elapsed().as_secs_f64();
    drop(scheduler);
    let log = sent(&out);
    let notes: Vec<&Vec<u8>> = log.iter().filter(|m| m[0] & 0xF0 != 0xB0).collect();
    assert_eq!(
        notes.len(),
        2 * perf.len(),
        "every note on and off was sent"
    );
    assert!(
        took >= length * 0.9,
        "not early: {took} s for a {length} s piece"
    );
    assert!(
        took < length + 2.0,
        "not stuck: {took} s for a {length} s piece"
    );
    assert!(
        all_notes_off_count(&out.log.lock().unwrap()) >= 2,
        "end and drop silence"
    );
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
    assert!(matches!(
        record(&input, &PortChoice::Name("drum machine".into()), 0.0),
        Err(echoai::live_midi::LiveMidiError::NoSuchPort(name)) if name.contains("drum machine")
    ));
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
    assert!(matches!(
        PortChoice::parse("7").resolve(&names),
        Err(echoai::live_midi::LiveMidiError::NoSuchPort(p)) if p == "7"
    ));
}

#[test]
fn the_virtual_port_opens_or_says_why_not() {
    use echoai::live_midi::{LiveMidiError, MidiOut, MidirOut, PortChoice};
    // The real MIDI system: this machine may or may not have one (CI has no ALSA sequencer).
    match MidirOut.connect(&PortChoice::Virtual("EchoAI Studio test".into())) {
        Ok(mut sender) => sender
            .send(&[0x90, 60, 1])
            .and(sender.send(&[0x80, 60, 0]))
            .unwrap(),
        Err(e) => {
            let message = e.to_string();
            if cfg!(unix) {
                assert!(
                    matches!(e, LiveMidiError::Unavailable(_) | LiveMidiError::Connect(_)),
                    "{message}"
                );
                assert!(message.contains("MIDI"), "{message}");
            } else {
                assert!(message.contains("loopMIDI"), "{message}");
            }
        }
    }
}
