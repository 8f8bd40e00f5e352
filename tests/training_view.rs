//! The training view (issue 15), driven headless through egui_kittest: the toggle against the
//! roll, the bias-corrected smoothing, runs overlaid from their checkpoints, and the samples a
//! `--sample-every` run leaves, listed after a restart.

use std::path::{Path, PathBuf};
use std::process::Command;

use echoai::studio::dialogs::FakeDialogs;
use echoai::studio::outputs::FakeOut;
use echoai::studio::{Central, Studio, StudioSettings, Tab};
use egui_kittest::kittest::Queryable;

mod common;
use common::studio::{fake_env, harness, session_root, step_until, training_in_the_tab};

/// A studio whose runs folder is `runs` (and whose last run was `last`), on the Train tab.
fn studio_with_runs(runs: &Path, last: Option<PathBuf>) -> Studio {
    studio_with_dialogs(runs, last, &FakeDialogs::default())
}

/// As [`studio_with_runs`], answering its dialogs from `dialogs`.
fn studio_with_dialogs(runs: &Path, last: Option<PathBuf>, dialogs: &FakeDialogs) -> Studio {
    let out = FakeOut::default();
    let mut settings = StudioSettings::default();
    settings.generate.checkpoint = None;
    settings.tab = Tab::Train;
    settings.train.runs_dir = runs.to_path_buf();
    settings.train.out_dir = last;
    Studio::new(fake_env(dialogs, &out, session_root()), settings)
}

/// `echoai train` on the demo piano pieces: a one-layer model, `steps` steps, more settings in
/// `extra`.
fn cli_run(out: &Path, steps: u64, extra: &[&str]) {
    let data = Path::new("assets/corpus/piano");
    let output = Command::new(env!("CARGO_BIN_EXE_echoai"))
        .args(["train", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args([
            "--model", "lstm", "--embed", "8", "--hidden", "16", "--layers", "1",
        ])
        .args(["--batch", "2", "--seq", "16", "--validate-every", "2"])
        .args(["--steps", &steps.to_string(), "--device", "cpu"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_central_area_switches_between_the_roll_and_the_training_view() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(studio_with_runs(&dir.path().join("runs"), None));
    h.run();
    assert!(h.query_by_label("log y").is_none(), "the roll first");
    h.get_by_label("Training view").click();
    h.run();
    assert_eq!(h.state().central, Central::Training);
    assert!(h.query_by_label("log y").is_some());
    assert!(h.query_by_label("Export CSV").is_some());
    h.get_by_label("Piano roll").click();
    h.run();
    assert_eq!(h.state().central, Central::Roll);
    assert!(h.query_by_label("log y").is_none());
    // The side panel's thumbnail opens it too.
    h.get_by_label("Open training view").click();
    h.run();
    assert_eq!(h.state().central, Central::Training);
    // Other tabs always show the roll.
    h.state_mut().tab = Tab::Library;
    h.run();
    assert!(h.query_by_label("log y").is_none());
}

#[test]
fn the_first_smoothed_point_is_the_first_raw_point() {
    let dir = tempfile::tempdir().unwrap();
    let files = ["fur-elise.mid", "bwv-850.mid", "solace.mid", "bethena.mid"];
    let mut h = training_in_the_tab(dir.path(), &files, (8, 16, 16), 5);
    h.get_by_label("Stop training").click();
    h.step();
    step_until(&mut h, 60, |s| !s.train.is_training());
    h.get_by_label("Training view").click();
    h.run();
    let (raw, smoothed) = h.state().training_view.first_loss_drawn().unwrap();
    assert_eq!(raw, smoothed, "bias-corrected: the EMA starts on the data");
    // A real run's first loss is about ln(390) = 5.97 nats; an uncorrected EMA with weight 0.9
    // would draw a tenth of it.
    assert!(raw > 4.0, "{raw}");
}

#[test]
fn two_runs_from_their_checkpoints_are_overlaid() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    cli_run(&runs.join("first"), 4, &["--sample-every", "0"]);
    cli_run(&runs.join("second"), 6, &["--sample-every", "0"]);
    let mut h = harness(studio_with_runs(&runs, None));
    h.state_mut().central = Central::Training;
    h.run();
    step_until(&mut h, 30, |s| s.training_view.runs.is_some());
    h.run();
    let listed = h.state().training_view.runs.clone().unwrap();
    assert_eq!(listed.len(), 2, "both runs are listed");
    let second = listed.iter().find(|r| r.name == "second").unwrap();
    assert_eq!(second.step, 6);
    assert_eq!(second.history.points.len(), 6, "its history is read back");
    assert!(h.query_by_label_contains("steps 6/6").is_some());
    h.get_by_label("first").click();
    h.run();
    h.get_by_label("second").click();
    h.run();
    let mut overlaid = h.state().training_view.overlaid();
    overlaid.sort();
    assert_eq!(overlaid, ["first", "second"]);
    // Unticking removes one.
    h.get_by_label("first").click();
    h.run();
    assert_eq!(h.state().training_view.overlaid(), ["second"]);
    assert!(h.query_by_label("Resume second").is_some());
}

#[test]
fn samples_of_a_sample_every_run_are_kept_and_listed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let run = runs.join("sampled");
    // Checkpoints at every sample: each swap must carry the samples across. Inline, because a
    // job still busy at the next sample step skips that step by design (the test machine may be
    // loaded); samples made in a job have their own test below.
    cli_run(
        &run,
        6,
        &[
            "--sample-every",
            "2",
            "--checkpoint-every",
            "2",
            "--sampling",
            "inline",
        ],
    );
    let samples = echoai::train::samples::list_samples(&run);
    let found: Vec<(u64, &str)> = samples.iter().map(|s| (s.step, s.kind.as_str())).collect();
    assert_eq!(
        found,
        [
            (2, "primer"),
            (2, "silence"),
            (4, "primer"),
            (4, "silence"),
            (6, "primer"),
            (6, "silence")
        ]
    );
    for s in &samples {
        // An untrained model may well stay silent; the primed ones hold at least the primer.
        let perf = echoai::midi::read_midi(&s.path).unwrap();
        assert!(
            s.kind == "silence" || !perf.notes.is_empty(),
            "{}",
            s.path.display()
        );
    }
    let mut h = harness(studio_with_runs(&runs, Some(run.clone())));
    h.state_mut().central = Central::Training;
    h.run();
    assert!(h.query_by_label("step 6 · silence").is_some());
    assert!(h.query_by_label("step 2 · primer").is_some());
    // Clicking one shows it on the roll and plays it.
    h.get_by_label("step 4 · silence").click();
    // Playing repaints every frame: step rather than run until still.
    h.run_steps(3);
    let s = h.state();
    assert_eq!(s.central, Central::Roll);
    assert_eq!(s.doc.path.as_deref(), Some(samples[3].path.as_path()));
    assert!(s.is_playing());
}

#[test]
fn samples_made_in_a_job_are_those_of_their_step_and_survive_checkpoint_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let inline = dir.path().join("inline");
    let job = dir.path().join("job");
    // A high rate from the first step, so weights a few steps apart sample differently.
    let every = [
        "--sample-every",
        "2",
        "--checkpoint-every",
        "2",
        "--lr",
        "0.05",
        "--warmup",
        "0",
    ];
    cli_run(
        &inline,
        6,
        &[&every[..], &["--sampling", "inline"]].concat(),
    );
    cli_run(&job, 6, &[&every[..], &["--sampling", "job"]].concat());
    let made = echoai::train::samples::list_samples(&job);
    let steps: Vec<u64> = made.iter().map(|s| s.step).collect();
    // A sampling due while the last job still runs is skipped (and said so), except the final
    // step's, which waits for it.
    assert!(steps.contains(&6), "{steps:?}");
    for sample in &made {
        // The job samples a copy of the weights taken at its step: the same files as the
        // training thread makes at that step with the same seeds.
        let twin = inline
            .join("samples")
            .join(sample.path.file_name().unwrap());
        assert_eq!(
            std::fs::read(&sample.path).unwrap(),
            std::fs::read(&twin).unwrap(),
            "{}",
            sample.path.display()
        );
    }
}

/// The training view of a six-step run `mine`, whose dialogs answer `<dir>/exports` twice.
fn training_view_exporting_to(dir: &Path) -> (PathBuf, egui_kittest::Harness<'static, Studio>) {
    let runs = dir.join("runs");
    let last = runs.join("mine");
    cli_run(&last, 6, &["--sample-every", "0"]);
    let exports = dir.join("exports");
    std::fs::create_dir_all(&exports).unwrap();
    let dialogs = FakeDialogs::default();
    dialogs.answer(&exports);
    dialogs.answer(&exports);
    let mut h = harness(studio_with_dialogs(&runs, Some(last), &dialogs));
    h.state_mut().central = Central::Training;
    h.run();
    (exports, h)
}

#[test]
fn export_csv_writes_the_curves_under_the_runs_name_and_never_over_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (exports, mut h) = training_view_exporting_to(dir.path());
    h.get_by_label("Export CSV").click();
    h.run();
    let first = exports.join("mine-curves.csv");
    let csv = std::fs::read_to_string(&first).expect("the curves are written");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("step,wall_s,loss,smoothed"));
    let steps: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(steps, ["1", "2", "3", "4", "5", "6"], "one row per step");
    // A second export goes beside the first, which stays as it was.
    h.get_by_label("Export CSV").click();
    h.run();
    assert!(exports.join("mine-curves-2.csv").exists());
    assert_eq!(std::fs::read_to_string(&first).unwrap(), csv);
}

/// The screenshot requests the last frame made (egui hands them to the integration; eframe or
/// a renderer fills them).
fn screenshot_requests(h: &egui_kittest::Harness<'_, Studio>) -> Vec<egui::ScreenshotCallback> {
    h.output()
        .viewport_output
        .values()
        .flat_map(|v| v.commands.iter())
        .filter_map(|c| match c {
            egui::ViewportCommand::Screenshot(callback) => Some(callback.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn export_png_writes_the_plot_region_under_the_runs_name_and_never_over_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (exports, mut h) = training_view_exporting_to(dir.path());
    let [w, ht] = [1600usize, 1200];
    // No renderer runs headless: the test plays the integration's part with a window-sized
    // image whose pixels say where they are.
    let window = |shade: u8| {
        let mut image = egui::ColorImage::filled([w, ht], egui::Color32::from_gray(shade));
        for (i, p) in image.pixels.iter_mut().enumerate() {
            if (i % w) % 2 == 0 {
                *p = egui::Color32::from_rgb(200, shade, 40);
            }
        }
        std::sync::Arc::new(image)
    };
    for (shade, name) in [(10u8, "mine-plot.png"), (90, "mine-plot-2.png")] {
        h.get_by_label("Export PNG").click();
        h.step();
        let requests = screenshot_requests(&h);
        assert_eq!(requests.len(), 1, "one screenshot is asked for");
        requests.into_iter().for_each(|r| r.complete(window(shade)));
        h.run();
        let path = exports.join(name);
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&path).expect("the plot is written beside any earlier one"),
        ));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        // The plots' region, not the whole window, cut from this export's own image.
        assert!(
            info.width > 100 && (info.width as usize) < w,
            "{}",
            info.width
        );
        assert!(
            info.height > 100 && (info.height as usize) < ht,
            "{}",
            info.height
        );
        assert!(pixels.chunks(4).any(|p| p == [200, shade, 40, 255]));
        assert!(
            pixels
                .chunks(4)
                .all(|p| p == [200, shade, 40, 255] || p == [shade, shade, shade, 255])
        );
        let status = format!("{:?}", h.state().status);
        assert!(
            status.contains("plot written to") && status.contains(name),
            "{status}"
        );
    }
}

#[test]
fn an_export_whose_folder_dialog_cannot_open_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let last = runs.join("mine");
    cli_run(&last, 2, &["--sample-every", "0"]);
    // No scripted answer: the fake, like rfd without xdg-desktop-portal, answers nothing at once.
    let dialogs = FakeDialogs::default();
    let mut h = harness(studio_with_dialogs(&runs, Some(last), &dialogs));
    h.state_mut().central = Central::Training;
    h.run();
    h.get_by_label("Export CSV").click();
    h.run();
    let status = format!("{:?}", h.state().status);
    assert!(status.contains("could not open"), "{status}");
    assert!(status.contains("xdg-desktop-portal"), "{status}");
}
