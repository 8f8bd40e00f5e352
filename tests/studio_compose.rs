//! The composer's controls in the studio (issue 16), driven headless through egui_kittest: a fresh
//! seed per Generate unless locked, the folded Constraints section, "Regenerate from here",
//! "Continue" and "Export all takes".

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use echoai::generate::music_terms::Scale;
use echoai::live_midi::FakeMidiOut;
use echoai::midi::read_midi;
use echoai::studio::dialogs::FakeDialogs;
use echoai::studio::outputs::FakeOut;
use echoai::studio::{Studio, StudioSettings};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

mod common;
use common::studio::{fake_env, session_root, step_until};

const PIECE: &str = "assets/corpus/piano/satie-gymnopedie-no1.mid";

fn studio(dialogs: &FakeDialogs, out: &FakeOut) -> Studio {
    let env = fake_env(dialogs, out, session_root());
    let mut settings = StudioSettings::default();
    // The bundled attention model; short takes keep the tests quick.
    settings.generate.seconds = 3.0;
    Studio::new(env, settings)
}

/// Taller than the shared harness: the Generate tab's folded sections open below the takes.
fn harness<'a>(s: Studio) -> Harness<'a, Studio> {
    Harness::builder()
        .with_size(egui::vec2(1400.0, 1400.0))
        .with_max_steps(10_000)
        .build_ui_state(|ui, s: &mut Studio| s.ui(ui), s)
}

fn press(h: &mut Harness<Studio>, label: &str) {
    h.get_by_label(label).click();
    h.step();
    step_until(h, 120, |s| !s.generate.is_generating());
}

#[test]
fn every_generate_is_a_new_piece_unless_the_seed_is_locked() {
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let mut h = harness(studio(&dialogs, &out));
    h.run();
    for _ in 0..3 {
        press(&mut h, "Generate  (Ctrl+G)");
    }
    let takes = &h.state().generate.takes;
    assert_eq!(takes.len(), 3, "{:?}", h.state().status);
    let seeds: Vec<u64> = takes.iter().map(|t| t.seed).collect();
    assert!(seeds[0] != seeds[1] && seeds[1] != seeds[2], "{seeds:?}");
    assert_ne!(takes[0].take.performance, takes[1].take.performance);
    // The seed is shown on each take.
    assert!(
        h.query_all_by_label_contains(&format!("seed {}", seeds[2]))
            .count()
            >= 1
    );
    // Locked, two presses repeat one take.
    h.get_by_label("Lock seed").click();
    h.run();
    press(&mut h, "Generate  (Ctrl+G)");
    press(&mut h, "Generate  (Ctrl+G)");
    let takes = &h.state().generate.takes;
    assert_eq!(takes[3].seed, takes[4].seed);
    assert_eq!(takes[3].seed, seeds[2], "the lock keeps the seed shown");
    assert_eq!(takes[3].take.performance, takes[4].take.performance);
    assert_eq!(takes[3].take.performance, takes[2].take.performance);
}

#[test]
fn constraints_are_folded_and_a_key_lock_from_the_tab_holds() {
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let mut h = harness(studio(&dialogs, &out));
    h.run();
    assert!(h.query_by_label("Key").is_none(), "folded by default");
    h.get_by_label("Constraints").click();
    h.run();
    h.get_by_role_and_label(egui::accesskit::Role::CheckBox, "Key")
        .click();
    h.run();
    assert!(h.state().generate.settings.constraints.key_on);
    assert!(h.query_by_label("Constraints (1 on)").is_some());
    // A seed known to play in 3 s, so "more than 5 notes" is about the lock, not luck.
    h.state_mut().generate.settings.seed = 1;
    h.state_mut().generate.settings.lock_seed = true;
    press(&mut h, "Generate  (Ctrl+G)");
    let take = &h.state().generate.takes[0];
    let c_major = Scale::parse("C major").unwrap();
    assert!(take.take.performance.len() > 5);
    assert!(
        take.take
            .performance
            .notes
            .iter()
            .all(|n| c_major.contains(n.pitch))
    );
    assert!(take.settings.contains("key C major"), "{}", take.settings);
}

#[test]
fn regenerate_from_here_keeps_the_first_30_seconds_note_for_note() {
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let mut s = studio(&dialogs, &out);
    // After Satie's first 30 s some seeds only rest (ten 1-s TIME_SHIFTs for seed 9): keep one
    // that plays, so the test is about the splice, not the model's mood.
    s.generate.settings.seconds = 10.0;
    s.generate.settings.seed = 1;
    s.generate.settings.lock_seed = true;
    s.open_path(std::path::Path::new(PIECE)).unwrap();
    let original = read_midi(std::path::Path::new(PIECE)).unwrap();
    assert!(original.end_time() > 40.0);
    let mut h = harness(s);
    h.run();
    out.position.store(30f64.to_bits(), Ordering::Relaxed);
    press(&mut h, "Regenerate from here");
    let take = &h.state().generate.takes[0].take;
    assert_eq!(take.primer_seconds, 30.0);
    let result = &take.performance;
    assert_eq!(result.first_seconds(30.0), original.first_seconds(30.0));
    let new: Vec<_> = result.notes.iter().filter(|n| n.start >= 30.0).collect();
    assert!(!new.is_empty());
    assert!(
        result
            .notes
            .iter()
            .all(|n| n.start < 30.0 && n.end <= 30.0 || n.start >= 30.0)
    );
    // The roll shows the take.
    assert_eq!(h.state().doc.len(), result.len());

    // Continue: the whole take stays, new notes follow its end.
    let before = result.clone();
    press(&mut h, "Continue");
    let take = &h.state().generate.takes[1].take;
    assert_eq!(take.primer_seconds, before.end_time());
    assert_eq!(take.performance.first_seconds(before.end_time()), before);
    assert!(take.performance.len() > before.len());
    // No gap at the join: the new part opens with a note at the old end.
    let first_new = take
        .performance
        .notes
        .iter()
        .filter(|n| n.start >= before.end_time())
        .map(|n| n.start)
        .fold(f64::INFINITY, f64::min);
    assert!(
        (first_new - before.end_time()).abs() < 0.011,
        "the continuation starts at {first_new}, the take ended at {}",
        before.end_time()
    );
}

#[test]
fn export_all_takes_writes_one_file_per_take() {
    let dir = tempfile::tempdir().unwrap();
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let mut h = harness(studio(&dialogs, &out));
    h.run();
    press(&mut h, "Generate  (Ctrl+G)");
    press(&mut h, "Generate  (Ctrl+G)");
    h.get_by_label("Export for a DAW").click();
    h.run();
    dialogs.answer(dir.path());
    h.get_by_label("Export all takes…").click();
    h.run();
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{:?}", h.state().status);
    for (file, entry) in files.iter().zip(&h.state().generate.takes) {
        let back = read_midi(file).unwrap();
        assert_eq!(back.len(), entry.take.performance.len());
        assert!(file.to_string_lossy().contains(&entry.seed.to_string()));
    }
}

#[test]
fn a_jam_on_the_computer_keyboard_is_answered_and_becomes_a_take() {
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let midi_out = FakeMidiOut::default();
    let mut env = fake_env(&dialogs, &out, session_root());
    env.midi_out = Arc::new(midi_out.clone());
    let mut h = harness(Studio::new(env, StudioSettings::default()));
    h.run();
    h.get_by_label("Jam (call and response)").click();
    h.run();
    h.get_by_label("Start jam").click();
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.query_by_label("listening").is_none() {
        assert!(Instant::now() < deadline, "{:?}", h.state().status);
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    // Musical typing: A, D, G are C4, E4, G4.
    for key in [egui::Key::A, egui::Key::D, egui::Key::G] {
        h.key_down(key);
        h.step();
        std::thread::sleep(Duration::from_millis(100));
        h.key_up(key);
        h.step();
    }
    // The answer comes through the studio's current output (here the fake transport).
    let ons = || {
        out.live
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m[0] & 0xf0 == 0x90)
            .map(|(_, m)| m[1])
            .collect::<Vec<u8>>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ons().len() <= 3 {
        assert!(Instant::now() < deadline, "no answer: {:?}", ons());
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    // The player's notes are echoed (the keyboard has no sound of its own), then the answer.
    assert_eq!(ons()[..3], [60, 64, 67]);
    assert!(
        midi_out.log.lock().unwrap().is_empty(),
        "no MIDI port was used"
    );
    std::thread::sleep(Duration::from_millis(300));
    h.get_by_label("Stop jam").click();
    h.run();
    let takes = &h.state().generate.takes;
    assert_eq!(takes.len(), 1, "{:?}", h.state().status);
    assert!(takes[0].name.contains("jam"));
    assert!(takes[0].take.performance.len() > 3);
    assert_eq!(h.state().doc.len(), takes[0].take.performance.len());
}
