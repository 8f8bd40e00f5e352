//! Inputs that once took the program down or hung it: time values far past the end of any
//! piece, link loops and pipes in a corpus folder, diverged or half-swapped checkpoints.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use echoai::midi::{MAX_PIECE_SECONDS, parse_midi};
use echoai::model::checkpoint;
use echoai::tokenizer::encode;

const LATE: u32 = (1 << 28) - 1;

/// At 1 tick per quarter and the slowest tempo, `LATE` ticks are 143 years.
fn slow(events: &[Vec<u8>]) -> Vec<u8> {
    let mut all = vec![tempo(0, 0xFF_FFFF)];
    all.extend_from_slice(events);
    smf(0, 1, &[track(&cat(&all))])
}

/// Every late value is clipped to the bound: the piece is at most 6 h and its events are few.
fn assert_bounded(name: &str, bytes: &[u8], notes: usize) {
    let perf = parse_midi(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(perf.len(), notes, "{name}");
    assert!(
        perf.end_time() <= MAX_PIECE_SECONDS,
        "{name}: {}",
        perf.end_time()
    );
    // One time shift per second at most, plus the notes' own events.
    let events = encode(&perf).len();
    assert!(events < 22_000 + 4 * notes, "{name}: {events} events");
}

#[test]
fn a_note_off_143_years_later_ends_at_the_bound() {
    let bytes = slow(&[ev(0, &[0x90, 60, 80]), ev(LATE, &[0x80, 60, 0])]);
    assert!(
        bytes.len() < 64,
        "the hostile file is tiny: {}",
        bytes.len()
    );
    assert_bounded("late note-off", &bytes, 1);
}

#[test]
fn a_late_pedal_release_a_late_controller_and_an_unreleased_key_are_bounded() {
    let pedal = slow(&[
        ev(0, &[0xB0, 64, 127]),
        ev(0, &[0x90, 60, 80]),
        ev(1, &[0x80, 60, 0]),
        ev(LATE, &[0xB0, 64, 0]),
    ]);
    assert_bounded("late pedal release", &pedal, 1);
    let controller = slow(&[ev(0, &[0x90, 60, 80]), ev(LATE, &[0xB0, 7, 100])]);
    assert_bounded("unreleased key, late controller", &controller, 1);
    // A late tempo change, then a late release under it.
    let tempo_map = slow(&[
        ev(0, &[0x90, 60, 80]),
        tempo(LATE, 1),
        ev(LATE, &[0x80, 60, 0]),
    ]);
    assert_bounded("late tempo map", &tempo_map, 1);
}

#[test]
fn a_late_onset_refuses_the_file_with_a_reason() {
    let bytes = slow(&[ev(LATE, &[0x90, 60, 80]), ev(1, &[0x80, 60, 0])]);
    let err = parse_midi(&bytes).unwrap_err().to_string();
    assert!(err.contains("later than"), "{err}");
    // Sequential patterns add up: each under the bound (about 4.7 h), together past it.
    let pattern = track(&cat(&[
        tempo(0, 0xFF_FFFF),
        ev(10, &[0x90, 60, 80]),
        ev(1000, &[0x80, 60, 0]),
    ]));
    let many = smf(2, 1, &vec![pattern; 4]);
    let err = parse_midi(&many).unwrap_err().to_string();
    assert!(err.contains("later than"), "{err}");
}

#[test]
fn convert_and_corpus_survive_the_hostile_file_beside_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = dir.path().join("hostile.mid");
    std::fs::write(
        &hostile,
        slow(&[ev(0, &[0x90, 60, 80]), ev(LATE, &[0x80, 60, 0])]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("late-onset.mid"),
        slow(&[ev(LATE, &[0x90, 60, 80]), ev(1, &[0x80, 60, 0])]),
    )
    .unwrap();
    std::fs::copy(
        "assets/corpus/piano/fur-elise.mid",
        dir.path().join("fur-elise.mid"),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_echoai");
    let out = dir.path().join("out.mid");
    let convert = Command::new(bin)
        .args(["convert", hostile.to_str().unwrap(), out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        convert.status.success(),
        "{}",
        String::from_utf8_lossy(&convert.stderr)
    );
    let corpus = Command::new(bin)
        .args(["corpus", dir.path().to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(corpus.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&corpus.stdout).unwrap();
    assert_eq!(summary["files_ok"], 3, "{summary}");
    assert_eq!(summary["files_failed"], 1, "{summary}");
}

#[cfg(unix)]
#[test]
fn link_loops_are_visited_once_and_pipes_are_never_opened() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::copy(
        "assets/corpus/piano/fur-elise.mid",
        root.join("a/b/one.mid"),
    )
    .unwrap();
    std::os::unix::fs::symlink(root.join("a"), root.join("a/b/up")).unwrap();
    std::os::unix::fs::symlink(root, root.join("a/root")).unwrap();
    let fifo = root.join("a/x.mid");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let files = echoai::corpus::scan_midi_files(root).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let corpus = echoai::corpus::Corpus::load(root, &|_, _| {}).unwrap();
    assert_eq!(corpus.summary.files_ok, 1);
    // Read directly, a pipe is refused at once rather than waited on.
    let err = echoai::midi::read_midi(&fifo).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_scan_can_be_cancelled() {
    let cancel = std::sync::atomic::AtomicBool::new(true);
    let result =
        echoai::corpus::Corpus::load_until(Path::new("assets/corpus"), &|_, _| {}, &cancel);
    assert!(matches!(
        result,
        Err(echoai::corpus::CorpusError::Cancelled)
    ));
}

/// Copies a bundled checkpoint (weights and config only) into `dir`.
fn bundled_copy(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for file in [checkpoint::CONFIG_FILE, checkpoint::MODEL_FILE] {
        std::fs::copy(Path::new("assets/models/lstm").join(file), dir.join(file)).unwrap();
    }
}

#[test]
fn a_checkpoint_with_nan_weights_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("diverged");
    bundled_copy(&ckpt);
    let mut tensors = candle_core::safetensors::load(
        ckpt.join(checkpoint::MODEL_FILE),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let w = &tensors["output.bias"];
    let mut values = w.to_vec1::<f32>().unwrap();
    values[7] = f32::NAN;
    let bad = candle_core::Tensor::from_vec(values, w.shape(), &candle_core::Device::Cpu).unwrap();
    tensors.insert("output.bias".into(), bad);
    candle_core::safetensors::save(&tensors, ckpt.join(checkpoint::MODEL_FILE)).unwrap();
    let err = match checkpoint::load_for_inference(&ckpt, &candle_core::Device::Cpu) {
        Ok(_) => panic!("a NaN weight was loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("output.bias") && err.contains("NaN"), "{err}");
}

#[test]
fn an_interrupted_swap_is_finished_by_the_next_load() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("run");
    // Killed between the two renames: the old checkpoint aside, the new one staged and complete.
    let old = dir.path().join(".run.old-999999");
    let staged = dir.path().join(".run.tmp-999999");
    bundled_copy(&old);
    bundled_copy(&staged);
    let mut meta = checkpoint::read_meta(&staged).unwrap();
    let newer = meta.step + 1;
    meta.step = newer;
    std::fs::write(
        staged.join(checkpoint::CONFIG_FILE),
        serde_json::to_string(&meta).unwrap(),
    )
    .unwrap();
    std::fs::write(staged.join(checkpoint::COMPLETE_MARKER), "complete\n").unwrap();
    // A half-written staging folder of another save is never chosen.
    let half = dir.path().join(".run.tmp-999998");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join(checkpoint::CONFIG_FILE), "{").unwrap();

    assert_eq!(checkpoint::read_meta(&ckpt).unwrap().step, newer);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("run")]);

    // Killed after the first rename with nothing staged: the set-aside one comes back.
    let dir = tempfile::tempdir().unwrap();
    bundled_copy(&dir.path().join(".run.old-999999"));
    let ckpt = dir.path().join("run");
    assert!(checkpoint::load_for_inference(&ckpt, &candle_core::Device::Cpu).is_ok());
    assert!(checkpoint::is_checkpoint(&ckpt));
}
