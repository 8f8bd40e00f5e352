//! The studio, driven headless through egui_kittest with fake dialogs, output and MIDI ports.

use std::path::Path;
use std::time::{Duration, Instant};

use echoai::midi::read_midi;
use echoai::studio::dialogs::FakeDialogs;
use echoai::studio::document::NoteOrigin;
use echoai::studio::outputs::FakeOut;
use echoai::studio::{Studio, StudioSettings};
use egui::{Key, Modifiers};
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};

mod common;
use common::studio::{fake_env, harness, session_root, step_until, studio, training_in_the_tab};

const PIECE: &str = "assets/corpus/piano/satie-gymnopedie-no1.mid";

#[test]
fn opening_a_file_puts_its_notes_on_the_roll() {
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let mut h = harness(studio(&dialogs, &out));
    let expected = read_midi(Path::new(PIECE)).unwrap().len();

    // The path the Open dialog takes (Ctrl+O).
    dialogs.answer(Path::new(PIECE));
    h.key_press_modifiers(Modifiers::COMMAND, Key::O);
    h.run();
    let s = h.state();
    assert_eq!(s.doc.len(), expected);
    assert!(s.doc.notes().iter().all(|n| n.origin == NoteOrigin::Loaded));
    // After "fit", every note is inside the view.
    let end = s.doc.end_time();
    let visible = s.doc.visible_range(
        s.roll.view_start,
        s.roll.view_start + 1400.0 / s.roll.pixels_per_second as f64,
    );
    assert_eq!(
        visible.len(),
        expected,
        "view {:?} end {end}",
        s.roll.view_start
    );
    assert!(
        h.query_all_by_label_contains("satie-gymnopedie-no1.mid")
            .count()
            >= 1
    );

    // A broken file is a message, and the piece stays.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.mid");
    std::fs::write(&bad, b"nonsense").unwrap();
    let err = h.state_mut().open_path(&bad).unwrap_err();
    assert!(
        err.contains("bad.mid") && err.contains("not a valid"),
        "{err}"
    );
    h.run();
    assert!(h.state().status.is_error);
    assert_eq!(h.state().doc.len(), expected);
}

#[test]
fn play_stop_and_space_drive_the_transport() {
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let mut s = studio(&dialogs, &out);
    s.open_path(Path::new(PIECE)).unwrap();
    let mut h = harness(s);
    h.run();
    assert!(
        out.loaded_notes.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the piece was loaded into the output"
    );
    h.get_by_label("Play").click();
    h.step();
    assert!(h.state().is_playing());
    h.get_by_label("Stop").click();
    h.run();
    assert!(!h.state().is_playing());
    h.key_press(Key::Space);
    h.step();
    assert!(h.state().is_playing());
    h.key_press(Key::Space);
    h.step();
    assert!(!h.state().is_playing());
}

#[test]
fn delete_and_undo_change_and_restore_the_selection() {
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let mut s = studio(&dialogs, &out);
    s.open_path(Path::new(PIECE)).unwrap();
    let before = s.doc.len();
    s.doc.select_box(10.0, 20.0, 0, 127, false);
    let selected = s.doc.selection_count();
    assert!(selected > 0);
    let mut h = harness(s);
    h.run();
    h.key_press(Key::Delete);
    h.step();
    assert_eq!(h.state().doc.len(), before - selected);
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.step();
    assert_eq!(h.state().doc.len(), before);
}

fn tiny_checkpoint(dir: &Path) -> std::path::PathBuf {
    use echoai::model::{ModelConfig, ModelKind};
    use echoai::train::{TrainConfig, TrainControl, TrainData, train};
    let corpus =
        echoai::corpus::Corpus::load(Path::new("assets/corpus/piano"), &|_, _| {}).unwrap();
    let config = TrainConfig {
        model: ModelConfig {
            kind: ModelKind::LstmAttention,
            embed: 16,
            hidden: 32,
            layers: 1,
            window: 8,
            heads: 2,
            ..ModelConfig::default()
        },
        steps: 3,
        batch: 2,
        seq_len: 32,
        validate_every: 0,
        checkpoint_every: 0,
        ..TrainConfig::default()
    };
    let out = dir.join("tiny");
    train(
        &TrainData::from_corpus(&corpus),
        &config,
        &out,
        false,
        &TrainControl::default(),
        &mut |_| {},
    )
    .unwrap();
    out
}

#[test]
fn generate_makes_a_take_on_the_roll_and_save_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = tiny_checkpoint(dir.path());
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let mut s = studio(&dialogs, &out);
    s.generate.add_checkpoint(checkpoint);
    s.generate.settings.seconds = 3.0;
    // A model trained for 3 steps plays nothing at all for some seeds: keep seed 1, which plays.
    s.generate.settings.lock_seed = true;
    let mut h = harness(s);
    h.run();
    h.get_by_label("Generate  (Ctrl+G)").click();
    h.step();
    step_until(&mut h, 60, |s| !s.generate.is_generating());
    let s = h.state();
    assert_eq!(s.generate.takes.len(), 1, "status: {:?}", s.status);
    assert!(!s.doc.is_empty());
    assert!(
        s.doc
            .notes()
            .iter()
            .all(|n| n.origin == NoteOrigin::Generated)
    );
    assert_eq!(s.doc.len(), s.generate.takes[0].take.performance.len());
    assert!(h.query_all_by_label_contains("Take 1").count() >= 1);

    let saved = dir.path().join("take.mid");
    dialogs.answer(&saved);
    h.key_press_modifiers(Modifiers::COMMAND, Key::S);
    h.step();
    let back = read_midi(&saved).unwrap();
    assert_eq!(back.len(), h.state().doc.len());
}

#[test]
fn training_from_the_tab_plots_and_leaves_a_checkpoint_for_generate() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        "fur-elise.mid",
        "bwv-850.mid",
        "maple-leaf-rag.mid",
        "solace.mid",
        "bethena.mid",
        "clair-de-lune.mid",
    ];
    let mut h = training_in_the_tab(dir.path(), &files, (16, 32, 32), 3);
    h.get_by_label("Stop training").click();
    h.step();
    step_until(&mut h, 60, |s| !s.train.is_training());
    let s = h.state();
    assert!(s.train.live.points.len() >= 3);
    let run = s.train.settings.out_dir.clone().unwrap();
    assert!(
        echoai::model::checkpoint::is_checkpoint(&run),
        "{}",
        run.display()
    );
    assert!(s.generate.checkpoints().contains(&run));
    assert_eq!(s.generate.settings.checkpoint.as_ref(), Some(&run));
}

#[test]
fn opening_another_file_over_edits_asks_first() {
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let mut s = studio(&dialogs, &out);
    s.open_path(Path::new(PIECE)).unwrap();
    assert!(s.unsaved_work().is_empty(), "a piece just opened is saved");
    s.doc.select_all();
    s.doc.delete_selected();
    let other = Path::new("assets/corpus/piano/fur-elise.mid");
    let mut h = harness(s);
    h.run();
    // Dropped, picked in the library or chosen in the dialog: all ask.
    dialogs.answer(other);
    h.key_press_modifiers(Modifiers::COMMAND, Key::O);
    h.run();
    assert!(h.state().pending.is_some());
    assert!(h.query_by_label_contains("unsaved changes").is_some());
    // The question's own Cancel (the generate panel has one too) is drawn last.
    h.query_all_by_label("Cancel").last().unwrap().click();
    h.run();
    assert!(h.state().pending.is_none());
    assert!(h.state().doc.is_empty(), "cancel kept the edited piece");
    dialogs.answer(other);
    h.key_press_modifiers(Modifiers::COMMAND, Key::O);
    h.run();
    h.get_by_label("Discard").click();
    h.run();
    assert_eq!(h.state().doc.len(), read_midi(other).unwrap().len());
}

#[test]
fn takes_are_kept_as_they_are_made_and_come_back_after_a_crash() {
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let root = session_root();
    let env = |dialogs: &FakeDialogs| fake_env(dialogs, &out, root.clone());
    let mut first = Studio::new(env(&dialogs), StudioSettings::default());
    let take = read_midi(Path::new(PIECE)).unwrap();
    first
        .generate
        .add_restored_take("a take".into(), take.clone());
    let mut h = harness(first);
    h.run();
    // Closing asks, because the take exists only in the session folder.
    assert!(!h.state_mut().request_close());
    h.run();
    assert!(
        h.query_by_label_contains("take(s) of this session")
            .is_some()
    );
    // The process dies here, unanswered.
    drop(h);

    let mut second = Studio::new(env(&dialogs), StudioSettings::default());
    assert_eq!(second.restorable.len(), 1);
    second.restore_earlier_takes();
    assert_eq!(second.generate.takes.len(), 1);
    assert_eq!(second.generate.takes[0].take.performance.len(), take.len());
    // Discarding on close removes this session's copy: nothing is offered a third time.
    assert!(!second.request_close());
    second.answer_unsaved(echoai::studio::unsaved::Choice::Discard, None);
    assert!(second.request_close());
    let third = Studio::new(env(&dialogs), StudioSettings::default());
    assert!(third.restorable.is_empty());
}

#[test]
fn a_file_dialog_that_cannot_open_offers_a_typed_path() {
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let mut h = harness(studio(&dialogs, &out));
    h.run();
    // No scripted answer: the fake returns nothing at once, as rfd does without a portal.
    h.key_press_modifiers(Modifiers::COMMAND, Key::O);
    h.run();
    assert!(h.state().status.text.contains("could not open"));
    assert!(
        h.query_by_label("Open MIDI file").is_some(),
        "the typed-path window is shown"
    );
    // A typed path opens the piece.
    h.get_by_role(egui::accesskit::Role::TextInput)
        .type_text(PIECE);
    h.run();
    h.get_by_label("OK").click();
    h.run();
    assert_eq!(
        h.state().doc.len(),
        read_midi(Path::new(PIECE)).unwrap().len()
    );
}

#[test]
fn a_typed_path_to_an_existing_file_is_replaced_only_when_confirmed() {
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let mut h = harness(studio(&dialogs, &out));
    dialogs.answer(Path::new(PIECE));
    h.key_press_modifiers(Modifiers::COMMAND, Key::O);
    h.run();
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("mine.mid");
    std::fs::write(&mine, "a file of my own").unwrap();
    // No scripted answer: Save offers a typed path, and the name typed is taken.
    h.key_press_modifiers(Modifiers::COMMAND, Key::S);
    h.run();
    h.get_by_role(egui::accesskit::Role::TextInput)
        .type_text(mine.to_str().unwrap());
    h.run();
    h.get_by_label("OK").click();
    h.run();
    let question = format!("{} already exists. Replace it?", mine.display());
    assert!(h.query_by_label(&question).is_some(), "asked first");
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "a file of my own");
    // Back to the field, keeping what was typed; asked again on OK.
    h.get_by_label("Back").click();
    h.run();
    assert!(h.query_by_label(&question).is_none());
    h.get_by_label("OK").click();
    h.run();
    h.get_by_label("Replace").click();
    h.run();
    let saved = read_midi(&mine).unwrap();
    assert_eq!(saved.len(), read_midi(Path::new(PIECE)).unwrap().len());
    assert!(h.query_by_label("Save MIDI file as").is_none(), "closed");
}

#[test]
fn the_library_searches_and_a_double_click_opens() {
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let mut s = studio(&dialogs, &out);
    s.tab = echoai::studio::Tab::Library;
    // Frames 40 ms apart, so four pointer events a frame apart fit in egui's double-click time.
    let mut h = Harness::builder()
        .with_size(egui::vec2(1400.0, 900.0))
        .with_step_dt(0.04)
        .build_ui_state(|ui, s: &mut Studio| s.ui(ui), s);
    h.run();
    let total = h.query_all_by_label_contains(".mid").count();
    h.get_by_role(egui::accesskit::Role::TextInput).focus();
    h.run();
    h.get_by_role(egui::accesskit::Role::TextInput)
        .type_text("fur-elise");
    h.run();
    let shown: Vec<String> = h
        .query_all_by_label_contains(".mid")
        .map(|n| n.accesskit_node().label().unwrap_or_default())
        .collect();
    assert!(
        shown.len() < total,
        "the search narrows {total} entries: {shown:?}"
    );
    assert!(shown.iter().all(|l| l.contains("fur-elise")), "{shown:?}");
    // One pointer click does not open (that takes a double click)...
    h.get_by_label("piano/fur-elise.mid").click();
    h.run();
    assert!(h.state().doc.is_empty(), "a single click only points");
    // ...a double click does: press, release, press, release, a frame apart each.
    let at = h.get_by_label("piano/fur-elise.mid").rect().center();
    h.event(egui::Event::PointerMoved(at));
    h.step();
    for pressed in [true, false, true, false] {
        h.event(egui::Event::PointerButton {
            pos: at,
            button: egui::PointerButton::Primary,
            pressed,
            modifiers: Modifiers::default(),
        });
        h.step();
    }
    h.run();
    let expected = read_midi(Path::new("assets/corpus/piano/fur-elise.mid"))
        .unwrap()
        .len();
    assert_eq!(h.state().doc.len(), expected);
    assert!(h.state().status.text.contains("fur-elise"));
}

#[test]
fn a_bundled_model_chosen_in_the_picker_generates() {
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let mut s = studio(&dialogs, &out);
    s.generate.settings.seconds = 2.0;
    let mut h = harness(s);
    h.run();
    // A first start selects the bundled attention model; the user picks the plain LSTM.
    let first = h.state().generate.settings.checkpoint.clone().unwrap();
    assert!(
        first.ends_with("assets/models/lstm-attention"),
        "{}",
        first.display()
    );
    h.get_by_label("Model").click();
    h.run();
    h.query_all_by_label_contains("lstm (lstm, step")
        .next()
        .expect("the bundled lstm model is offered")
        .click();
    h.run();
    let chosen = h.state().generate.settings.checkpoint.clone().unwrap();
    assert!(
        chosen.ends_with("assets/models/lstm"),
        "{}",
        chosen.display()
    );
    h.get_by_label("Generate  (Ctrl+G)").click();
    h.step();
    step_until(&mut h, 60, |s| !s.generate.is_generating());
    assert_eq!(h.state().generate.takes.len(), 1, "{:?}", h.state().status);
}

#[test]
fn pause_holds_training_and_checkpoint_now_writes_one() {
    let dir = tempfile::tempdir().unwrap();
    let files = ["fur-elise.mid", "bwv-850.mid", "solace.mid", "bethena.mid"];
    let mut h = training_in_the_tab(dir.path(), &files, (8, 16, 16), 2);
    h.get_by_label("Pause training").click();
    h.step();
    // The button turns into "Resume training" once the run reports the pause.
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.query_by_label("Resume training").is_none() {
        assert!(Instant::now() < deadline, "the run paused");
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    let held = h.state().train.live.points.len();
    for _ in 0..20 {
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        h.state().train.live.points.len(),
        held,
        "no step while paused"
    );
    let run = h.state().train.settings.out_dir.clone().unwrap();
    assert!(!echoai::model::checkpoint::is_checkpoint(&run));
    h.get_by_label("Checkpoint now").click();
    h.step();
    step_until(&mut h, 30, |_| {
        echoai::model::checkpoint::is_checkpoint(&run)
    });
    let saved = echoai::model::checkpoint::read_meta(&run).unwrap().step;
    assert_eq!(saved as usize, held, "the checkpoint holds the paused step");
    // The runs list reads the folders again: the running run is listed from its first
    // checkpoint on.
    step_until(&mut h, 30, |s| {
        s.training_view
            .runs
            .as_ref()
            .is_some_and(|runs| runs.iter().any(|r| r.folder == run))
    });
    h.get_by_label("Resume training").click();
    h.step();
    step_until(&mut h, 60, |s| s.train.live.points.len() > held);
    h.get_by_label("Stop training").click();
    h.step();
    step_until(&mut h, 60, |s| !s.train.is_training());
}

#[test]
fn a_run_that_died_is_reported_at_start_and_offered_for_resuming() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // A run's folder with its checkpoint, and the marker of a process that no longer exists.
    std::fs::create_dir(&run).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new("assets/models/lstm").join(file), run.join(file)).unwrap();
    }
    std::fs::write(
        run.join(echoai::run_folder::RUN_MARKER),
        r#"{"pid": 4000000000, "started_unix_s": 1, "start_step": 3000}"#,
    )
    .unwrap();
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let env = fake_env(&dialogs, &out, session_root());
    let mut settings = StudioSettings::default();
    settings.train.out_dir = Some(run.clone());
    settings.tab = echoai::studio::Tab::Train;
    let mut h = harness(Studio::new(env, settings));
    h.run();
    let died = h
        .state()
        .train
        .unfinished_run()
        .expect("the dead run is found");
    assert_eq!(died.checkpoint_step, Some(3400));
    assert!(h.query_by_label_contains("did not finish").is_some());
    assert!(h.query_by_label("Resume that run").is_some());
}
