//! The jam loop, headless: a phrase comes in on a fake MIDI input that plays its messages at their
//! times, the bundled attention model answers on a fake output after the pause, a new note cuts
//! the answer short, and the session take holds both parts. The latency from the pause's end to
//! the first answer note is the one timed assertion, as issue 16 asks (bound: 30 ms).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use echoai::jam::{Jam, JamConfig};
use echoai::live_midi::{
    FakeMidiOut, LiveMidiError, MidiCallback, MidiIn, MidiOut, PortChoice, SentLog,
};
use echoai::model::checkpoint::load_for_inference;

/// An input port that plays `(delay before, message)` from a thread of its own, in real time.
struct PacedMidiIn {
    script: Vec<(Duration, Vec<u8>)>,
    /// When each message was delivered.
    delivered: Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl MidiIn for PacedMidiIn {
    fn ports(&self) -> Result<Vec<String>, LiveMidiError> {
        Ok(vec!["Fake keyboard".into()])
    }

    fn listen(
        &self,
        port: &PortChoice,
        mut callback: MidiCallback,
    ) -> Result<Box<dyn Send>, LiveMidiError> {
        port.resolve(&self.ports()?)?;
        let script = self.script.clone();
        let delivered = self.delivered.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            for (delay, bytes) in &script {
                std::thread::sleep(*delay);
                // Noted before the jam hears it, so the measured latency is never flattered.
                delivered.lock().unwrap().push(Instant::now());
                callback(start.elapsed().as_micros() as u64, bytes);
            }
        });
        Ok(Box::new(thread))
    }
}

/// A four-note phrase: C E G C, 150 ms each.
fn phrase() -> Vec<(Duration, Vec<u8>)> {
    let mut script = Vec::new();
    for (i, pitch) in [60u8, 64, 67, 72].into_iter().enumerate() {
        let gap = if i == 0 { 50 } else { 10 };
        script.push((Duration::from_millis(gap), vec![0x90, pitch, 90]));
        script.push((Duration::from_millis(140), vec![0x80, pitch, 0]));
    }
    script
}

fn note_ons(log: &SentLog) -> Vec<(Instant, u8)> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(_, m)| m.len() == 3 && m[0] & 0xf0 == 0x90 && m[2] > 0)
        .map(|(t, m)| (*t, m[1]))
        .collect()
}

fn jam(out: &FakeMidiOut, answer_seconds: f64) -> Jam {
    let (model, _) =
        load_for_inference(Path::new("assets/models/lstm-attention"), &Device::Cpu).unwrap();
    let sender = out
        .connect(&PortChoice::Virtual("EchoAI Studio".into()))
        .unwrap();
    let mut config = JamConfig {
        answer_seconds,
        ..JamConfig::default()
    };
    config.sampling.seed = 11;
    Jam::start(Arc::new(model), sender, config).unwrap()
}

fn wait_until(seconds: f64, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_phrase_is_answered_after_the_pause_within_30_ms() {
    let out = FakeMidiOut::default();
    let jam = jam(&out, 2.0);
    let input = PacedMidiIn {
        script: phrase(),
        delivered: Default::default(),
    };
    let _conn = input
        .listen(&PortChoice::Name("Fake".into()), jam.midi_callback())
        .unwrap();
    wait_until(10.0, || !jam.state().latencies.is_empty());
    let last_input = *input.delivered.lock().unwrap().last().unwrap();
    let (first_answer, _) = note_ons(&out.log)[0];
    // Measured outside the jam: from the player's last message plus the pause to the first
    // answer note the fake output received.
    let pause_end = last_input + Duration::from_secs_f64(0.6);
    let latency = first_answer.saturating_duration_since(pause_end);
    assert!(first_answer >= pause_end, "answered before the pause ended");
    eprintln!(
        "jam latency: {:.2} ms measured at the fake ports, {:.2} ms inside the jam",
        latency.as_secs_f64() * 1e3,
        jam.state().latencies[0].as_secs_f64() * 1e3
    );
    assert!(latency < Duration::from_millis(30), "{latency:?}");

    // The answer plays out and ends with every note released.
    wait_until(10.0, || !jam.state().answering);
    let state = jam.stop();
    let player: Vec<u8> = state
        .notes
        .iter()
        .filter(|n| !n.by_model)
        .map(|n| n.note.pitch)
        .collect();
    assert_eq!(player, [60, 64, 67, 72]);
    let answer: Vec<_> = state.notes.iter().filter(|n| n.by_model).collect();
    assert!(!answer.is_empty());
    let phrase_end = state
        .notes
        .iter()
        .filter(|n| !n.by_model)
        .map(|n| n.note.end)
        .fold(0.0, f64::max);
    for n in &answer {
        assert!(
            n.note.start >= phrase_end + 0.55,
            "{n:?} starts in the phrase"
        );
        assert!(
            n.note.end <= phrase_end + 0.6 + 2.0 + 0.02,
            "{n:?} outlasts the answer"
        );
    }
    let log = out.log.lock().unwrap();
    let ons = log.iter().filter(|(_, m)| m[0] & 0xf0 == 0x90).count();
    let offs = log.iter().filter(|(_, m)| m[0] & 0xf0 == 0x80).count();
    assert_eq!(ons, offs, "every answer note is released");
}

#[test]
fn a_new_note_cuts_the_answer_short_and_the_take_holds_both_parts() {
    let out = FakeMidiOut::default();
    let jam = jam(&out, 8.0);
    for pitch in [62u8, 65, 69] {
        jam.note_on(pitch, 80);
        std::thread::sleep(Duration::from_millis(120));
        jam.note_off(pitch);
    }
    wait_until(10.0, || !note_ons(&out.log).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    let interrupt = Instant::now();
    jam.note_on(50, 100);
    wait_until(5.0, || !jam.state().answering);
    std::thread::sleep(Duration::from_millis(200));
    // After the interrupt, no answer note starts, and every answer note was released.
    let late: Vec<_> = note_ons(&out.log)
        .into_iter()
        .filter(|(t, _)| *t > interrupt + Duration::from_millis(20))
        .collect();
    assert!(
        late.is_empty(),
        "{} answer notes after the interrupt",
        late.len()
    );
    jam.note_off(50);
    std::thread::sleep(Duration::from_millis(50));
    let take = jam.take();
    let state = jam.stop();
    let answers: Vec<_> = state.notes.iter().filter(|n| n.by_model).collect();
    assert!(!answers.is_empty());
    let cut = answers.iter().map(|n| n.note.end).fold(0.0, f64::max);
    let player_last = state
        .notes
        .iter()
        .find(|n| !n.by_model && n.note.pitch == 50)
        .expect("the interrupting note is in the take");
    assert!(
        cut <= player_last.note.start + 0.05,
        "answer ran on to {cut}"
    );
    assert!(cut < player_last.note.start + 8.0);
    let log = out.log.lock().unwrap();
    let ons = log.iter().filter(|(_, m)| m[0] & 0xf0 == 0x90).count();
    let offs = log.iter().filter(|(_, m)| m[0] & 0xf0 == 0x80).count();
    assert_eq!(ons, offs, "no stuck answer note");
    let take_pitches: Vec<u8> = take.notes.iter().map(|n| n.pitch).collect();
    for pitch in [62, 65, 69, 50] {
        assert!(
            take_pitches.contains(&pitch),
            "{pitch} missing from the take"
        );
    }
    assert_eq!(
        state.notes.iter().filter(|n| !n.by_model).count(),
        4,
        "three phrase notes and the interrupting one"
    );
}

#[test]
fn a_key_struck_again_while_it_sounds_is_released_first_on_the_output() {
    let out = FakeMidiOut::default();
    let (model, _) =
        load_for_inference(Path::new("assets/models/lstm-attention"), &Device::Cpu).unwrap();
    let sender = out
        .connect(&PortChoice::Virtual("EchoAI Studio".into()))
        .unwrap();
    let config = JamConfig {
        // Long enough that the model never answers: only the echoed player is on the output.
        pause_seconds: 10.0,
        echo_player: true,
        ..JamConfig::default()
    };
    let jam = Jam::start(Arc::new(model), sender, config).unwrap();
    jam.note_on(60, 90);
    jam.note_on(60, 70);
    jam.note_off(60);
    let state = jam.stop();
    let log = out.log.lock().unwrap();
    let notes: Vec<(u8, u8)> = log
        .iter()
        .filter(|(_, m)| m[0] & 0xe0 == 0x80)
        .map(|(_, m)| (m[0] & 0xf0, m[2]))
        .collect();
    assert_eq!(notes, [(0x90, 90), (0x80, 0), (0x90, 70), (0x80, 0)]);
    let played: Vec<u8> = state.notes.iter().map(|n| n.note.velocity).collect();
    assert_eq!(played, [90, 70], "both strikes are in the take");
}
