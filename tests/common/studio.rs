//! The studio driven headless through egui_kittest: fake dialogs, output and ports, and a studio
//! training on a few demo files, shared by the studio test files.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use echoai::live_midi::{FakeMidiIn, FakeMidiOut};
use echoai::studio::dialogs::FakeDialogs;
use echoai::studio::outputs::FakeOut;
use echoai::studio::{Studio, StudioEnv, StudioSettings};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

/// Fake dialogs, output and ports; session takes under `session_root`.
pub fn fake_env(
    dialogs: &FakeDialogs,
    out: &FakeOut,
    session_root: std::path::PathBuf,
) -> StudioEnv {
    StudioEnv {
        dialogs: Box::new(dialogs.clone()),
        output: Box::new(out.clone()),
        midi_out: Arc::new(FakeMidiOut::default()),
        midi_in: Box::new(FakeMidiIn::default()),
        session_root,
    }
}

pub fn studio(dialogs: &FakeDialogs, out: &FakeOut) -> Studio {
    let env = fake_env(dialogs, out, session_root());
    let mut settings = StudioSettings::default();
    // No bundled model is assumed: tests pick their own checkpoints.
    settings.generate.checkpoint = None;
    Studio::new(env, settings)
}

/// A fresh folder for each studio's session takes (kept for the test binary's life).
pub fn session_root() -> std::path::PathBuf {
    tempfile::tempdir().unwrap().keep()
}

pub fn harness<'a>(s: Studio) -> Harness<'a, Studio> {
    Harness::builder()
        .with_size(egui::vec2(1400.0, 900.0))
        .with_max_steps(10_000)
        .build_ui_state(|ui, s: &mut Studio| s.ui(ui), s)
}

/// Steps the UI until `done` holds (background jobs finish on their own threads).
pub fn step_until(h: &mut Harness<Studio>, seconds: u64, done: impl Fn(&Studio) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done(h.state()) {
        assert!(
            Instant::now() < deadline,
            "timed out; status: {:?}",
            h.state().status
        );
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.step();
}

/// A studio on the Train tab that has scanned `files` of the demo piano folder (copied under
/// `dir`) and is training a one-layer model of `(embed, hidden, seq)`, past `steps` steps.
pub fn training_in_the_tab<'a>(
    dir: &Path,
    files: &[&str],
    (embed, hidden, seq): (usize, usize, usize),
    steps: usize,
) -> Harness<'a, Studio> {
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    for name in files {
        std::fs::copy(Path::new("assets/corpus/piano").join(name), data.join(name)).unwrap();
    }
    let dialogs = FakeDialogs::default();
    let out = FakeOut::default();
    let mut s = studio(&dialogs, &out);
    s.tab = echoai::studio::Tab::Train;
    let t = &mut s.train.settings;
    t.runs_dir = dir.join("runs");
    (t.embed, t.hidden, t.layers, t.steps, t.batch, t.seq) = (embed, hidden, 1, 100_000, 2, seq);
    let mut h = harness(s);
    h.run();
    dialogs.answer(&data);
    h.get_by_label("Choose folder…").click();
    h.step();
    step_until(&mut h, 30, |s| s.train.corpus.is_some());
    h.get_by_label("Start training").click();
    h.step();
    step_until(&mut h, 60, |s| s.train.live.points.len() >= steps);
    h
}
