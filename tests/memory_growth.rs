//! Memory that stays in use must not grow with the length of a run (issue 11: training kept
//! about 33 MB per step and a default-size run was killed by the OOM killer).
//!
//! This binary counts live heap bytes with a counting global allocator (`common::peak_alloc`), which is deterministic where
//! the resident set size is not. Each test samples the count at two points of a long run, after
//! warm-up, and bounds the growth by what the run legitimately keeps (a loss per step, a note per
//! event), far below what one retained activation or gradient would add.

mod common;

use std::sync::atomic::AtomicBool;

use common::peak_alloc::{ONE_AT_A_TIME, PeakCounting, live_bytes};
use echoai::generate::{GenerateConfig, generate};
use echoai::model::{ModelConfig, ModelKind, MusicModel};
use echoai::tokenizer::{END, Event, START};
use echoai::train::{TrainConfig, TrainControl, TrainData, TrainEvent, train};

#[global_allocator]
static ALLOCATOR: PeakCounting = PeakCounting;

fn synthetic_data() -> TrainData {
    let mut piece = vec![START, Event::Velocity(20).id()];
    for &p in &[60u8, 64, 67, 72, 71, 69] {
        piece.extend([
            Event::NoteOn(p).id(),
            Event::TimeShift(25).id(),
            Event::NoteOff(p).id(),
        ]);
    }
    piece.push(END);
    let cycle = |n: usize| {
        piece
            .iter()
            .copied()
            .cycle()
            .take(piece.len() * n)
            .collect()
    };
    TrainData {
        train: cycle(40),
        validation: cycle(8),
        ..TrainData::default()
    }
}

fn tiny(kind: ModelKind, steps: u64) -> TrainConfig {
    TrainConfig {
        model: ModelConfig {
            kind,
            embed: 8,
            hidden: 16,
            layers: 2,
            window: 4,
            heads: 2,
            dropout: 0.1,
            ..ModelConfig::default()
        },
        steps,
        batch: 2,
        seq_len: 16,
        warmup: 5,
        validate_every: 25,
        validation_crops: 4,
        checkpoint_every: 100,
        augment: true,
        ..TrainConfig::default()
    }
}

/// Live bytes after step `from` and after the last step of a run of `steps`.
fn live_bytes_across_training(kind: ModelKind, from: u64, steps: u64) -> (isize, isize) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (mut early, mut late) = (None, None);
    let mut on_event = |e: TrainEvent| {
        if let TrainEvent::Step { step, .. } = e {
            if step == from {
                early = Some(live_bytes());
            }
            if step == steps {
                late = Some(live_bytes());
            }
        }
    };
    let config = tiny(kind, steps);
    train(
        &synthetic_data(),
        &config,
        &out,
        false,
        &TrainControl::default(),
        &mut on_event,
    )
    .unwrap();
    (early.unwrap(), late.unwrap())
}

/// What a run may keep per step: its loss history entry, with room for the vector's doubling.
const KEPT_PER_STEP: isize = 64;
/// Slack for one-off allocations after warm-up (thread-pool and logging state, a checkpoint's
/// path): a fraction of one step's activations even for this tiny model.
const SLACK: isize = 64 * 1024;

#[test]
fn training_keeps_no_memory_from_one_step_to_the_next() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for kind in [ModelKind::Lstm, ModelKind::LstmAttention] {
        let (from, steps) = (60, 360);
        let (early, late) = live_bytes_across_training(kind, from, steps);
        let growth = late - early;
        let allowed = SLACK + KEPT_PER_STEP * (steps - from) as isize;
        assert!(
            growth < allowed,
            "{kind}: {growth} bytes more in use after step {steps} than after step {from} \
             ({} per step; allowed {allowed} in all)",
            growth / (steps - from) as isize
        );
    }
}

#[test]
fn a_long_take_keeps_only_its_own_events_and_notes() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(
        &varmap,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    );
    let config = ModelConfig {
        kind: ModelKind::LstmAttention,
        embed: 8,
        hidden: 16,
        layers: 2,
        window: 4,
        heads: 2,
        ..ModelConfig::default()
    };
    let model = MusicModel::new(&config, vb).unwrap();
    let settings = GenerateConfig {
        max_seconds: 20_000.0,
        min_seconds: 20_000.0,
        max_events: 12_000,
        top_p: None,
        ..GenerateConfig::default()
    };
    let (mut early, mut late, mut count) = (0, 0, 0usize);
    let takes = generate(
        &model,
        None,
        &settings,
        &AtomicBool::new(false),
        &mut |_| {
            count += 1;
            if count == 2_000 {
                early = live_bytes();
            }
            if count == 12_000 {
                late = live_bytes();
            }
        },
    )
    .unwrap();
    assert_eq!(count, 12_000, "the take ran to its length");
    let notes = takes[0].performance.len() as isize;
    // Each event is kept as an id (2 bytes) and each note in the decoder (about 24 bytes); both
    // vectors may double once more after the first sample.
    let allowed = SLACK + 3 * (2 * 12_000 + 32 * notes);
    let growth = late - early;
    assert!(
        growth < allowed,
        "generating events 2,000..12,000 kept {growth} bytes (allowed {allowed} for {notes} notes)"
    );
}

#[test]
fn the_studios_training_job_keeps_no_memory_from_step_to_step() {
    use echoai::studio::train_panel::{TrainPanel, TrainSettings};
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for name in ["fur-elise.mid", "bethena.mid", "solace.mid"] {
        std::fs::copy(format!("assets/corpus/piano/{name}"), data.join(name)).unwrap();
    }
    let settings = TrainSettings {
        runs_dir: dir.path().join("runs"),
        kind: ModelKind::LstmAttention,
        embed: 8,
        hidden: 16,
        layers: 2,
        window: 4,
        heads: 2,
        steps: 360,
        batch: 2,
        seq: 16,
        device: echoai::device::DeviceChoice::Cpu,
        ..TrainSettings::default()
    };
    let mut panel = TrainPanel::new(settings);
    panel.scan(None, data);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while panel.corpus.is_none() {
        assert!(std::time::Instant::now() < deadline, "the scan finished");
        panel.poll();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panel.start(None).unwrap();
    // Both samples are taken while the run is still going (whatever it keeps is freed with it
    // at the end) and while it is paused between steps: this thread samples, so a running step's
    // buffers would otherwise be counted at whatever point the step happened to be.
    let sample_paused = |panel: &mut TrainPanel, after: f64| -> (f64, isize) {
        while (panel.live.last_step() as f64) < after {
            assert!(
                std::time::Instant::now() < deadline,
                "the run reached step {after}"
            );
            panel.poll();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panel.set_paused(true);
        while !panel.is_paused() {
            assert!(std::time::Instant::now() < deadline, "the run paused");
            panel.poll();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let step = panel.live.last_step() as f64;
        let bytes = live_bytes();
        panel.set_paused(false);
        (step, bytes)
    };
    let (first, early) = sample_paused(&mut panel, 60.0);
    let (last, late) = sample_paused(&mut panel, 300.0);
    assert!(
        panel.is_training() && last < 360.0,
        "sampled during the run"
    );
    while panel.is_training() {
        panel.poll();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // The panel keeps a [step, loss] point per step for its plot.
    let allowed = SLACK + (KEPT_PER_STEP + 32) * (last - first) as isize;
    let growth = late - early;
    assert!(
        growth < allowed,
        "the studio's run kept {growth} bytes between steps {first} and {last} (allowed {allowed})"
    );
}
