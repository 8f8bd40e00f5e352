//! Training, checkpoints, resume and generation on tiny models (seconds on CPU).

mod common;

use common::tensor_bits;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use echoai::generate::{GenerateConfig, generate};
use echoai::model::checkpoint::{self, load_for_inference};
use echoai::model::{ModelConfig, ModelKind};
use echoai::tokenizer::{END, Event, START};
use echoai::train::{TrainConfig, TrainControl, TrainData, TrainError, TrainEvent, train};

/// A short "piece" repeated: a rising arpeggio with steady timing, so every event follows from
/// the two before it and the sequence can be learnt exactly.
fn synthetic_data() -> TrainData {
    let mut piece = vec![START, Event::Velocity(20).id()];
    for &p in &[60u8, 64, 67, 72] {
        piece.extend([
            Event::NoteOn(p).id(),
            Event::TimeShift(25).id(),
            Event::NoteOff(p).id(),
        ]);
    }
    piece.push(END);
    let train: Vec<u16> = piece
        .iter()
        .copied()
        .cycle()
        .take(piece.len() * 60)
        .collect();
    let validation: Vec<u16> = piece
        .iter()
        .copied()
        .cycle()
        .take(piece.len() * 6)
        .collect();
    TrainData {
        train,
        validation,
        ..TrainData::default()
    }
}

fn tiny(kind: ModelKind, steps: u64) -> TrainConfig {
    TrainConfig {
        model: ModelConfig {
            kind,
            embed: 16,
            hidden: 32,
            layers: 2,
            window: 8,
            heads: 2,
            dropout: 0.1,
            ..ModelConfig::default()
        },
        steps,
        batch: 8,
        seq_len: 32,
        lr: 1e-2,
        warmup: 5,
        validate_every: 20,
        checkpoint_every: 0,
        augment: false,
        ..TrainConfig::default()
    }
}

fn run(
    config: &TrainConfig,
    out: &Path,
    resume: bool,
) -> (
    Result<echoai::train::TrainOutcome, TrainError>,
    Vec<TrainEvent>,
) {
    let mut events = Vec::new();
    let result = train(
        &synthetic_data(),
        config,
        out,
        resume,
        &TrainControl::default(),
        &mut |e| events.push(e),
    );
    (result, events)
}

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn tiny_models_overfit_a_synthetic_corpus() {
    for kind in [ModelKind::Lstm, ModelKind::LstmAttention] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ckpt");
        let (result, events) = run(&tiny(kind, 300), &out, false);
        let outcome = result.unwrap();
        assert_eq!(outcome.step, 300);
        assert!(matches!(events.first(), Some(TrainEvent::Started { .. })));
        assert!(matches!(
            events.last(),
            Some(TrainEvent::Finished {
                stopped_early: false,
                ..
            })
        ));
        let losses: Vec<f64> = events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::Step { loss, .. } => Some(*loss),
                _ => None,
            })
            .collect();
        assert_eq!(losses.len(), 300);
        // From ln(390) = 5.97 nats at the start to a nearly deterministic sequence.
        assert!(losses[0] > 5.0, "{kind}: first loss {}", losses[0]);
        let last = losses[290..].iter().sum::<f64>() / 10.0;
        assert!(last < 0.5, "{kind}: final loss {last}");
        let val = outcome.last_validation.unwrap();
        assert!(val < 0.5, "{kind}: validation {val}");
    }
}

#[test]
fn checkpoint_round_trip_gives_the_trained_models_logits() {
    use candle_nn::{VarBuilder, VarMap};
    use echoai::model::MusicModel;
    use echoai::optim::{AdamW, AdamWConfig};
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(ModelKind::LstmAttention, 5).model;
    // Train in memory, so the reference is the model that was trained, not a file.
    let varmap = VarMap::new();
    let trained = MusicModel::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    echoai::model::init::initialize(&varmap, &config, 3).unwrap();
    let named = varmap.data().lock().unwrap().clone();
    let mut optimizer = AdamW::new(named, AdamWConfig::default()).unwrap();
    let data = synthetic_data();
    let ids: Vec<u32> = data.train[..65].iter().map(|&i| i as u32).collect();
    let inputs = Tensor::from_vec(ids[..64].to_vec(), (1, 64), &Device::Cpu).unwrap();
    let targets = Tensor::from_vec(ids[1..].to_vec(), 64, &Device::Cpu).unwrap();
    for _ in 0..5 {
        let loss = trained.loss(&inputs, &targets, None).unwrap();
        optimizer
            .step(&loss.backward().unwrap(), 1e-2, 3.0)
            .unwrap();
    }
    let out = dir.path().join("ckpt");
    let mut meta = checkpoint::CheckpointMeta::new(config.clone(), Default::default());
    meta.step = 5;
    checkpoint::save(&out, &meta, &checkpoint::varmap_tensors(&varmap), None).unwrap();
    let (loaded, loaded_meta) = load_for_inference(&out, &Device::Cpu).unwrap();
    assert_eq!(loaded_meta, meta);
    let probe = Tensor::from_vec(
        (0..20u32).map(|i| i * 17 % 390).collect::<Vec<_>>(),
        (1, 20),
        &Device::Cpu,
    )
    .unwrap();
    let expected = trained
        .forward(&probe, None)
        .unwrap()
        .flatten_all()
        .unwrap();
    let got = loaded.forward(&probe, None).unwrap().flatten_all().unwrap();
    // Bit for bit: the same weights through the same code.
    assert_eq!(
        expected.to_vec1::<f32>().unwrap(),
        got.to_vec1::<f32>().unwrap()
    );
    // And the training did change the weights (the test would pass on an untrained copy too
    // otherwise): the loaded model differs from a fresh one.
    let fresh_map = VarMap::new();
    let fresh = MusicModel::new(
        &config,
        VarBuilder::from_varmap(&fresh_map, DType::F32, &Device::Cpu),
    )
    .unwrap();
    echoai::model::init::initialize(&fresh_map, &config, 3).unwrap();
    let untrained = fresh.forward(&probe, None).unwrap().flatten_all().unwrap();
    assert_ne!(
        untrained.to_vec1::<f32>().unwrap(),
        got.to_vec1::<f32>().unwrap()
    );
}

fn step_losses(events: &[TrainEvent]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { step, loss, .. } => Some((*step, loss.to_bits())),
            _ => None,
        })
        .collect()
}

#[test]
fn resume_equals_an_uninterrupted_run_bit_for_bit() {
    for kind in [ModelKind::Lstm, ModelKind::LstmAttention] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = tiny(kind, 12);
        config.augment = true;
        config.validate_every = 4;
        let whole = dir.path().join("whole");
        let (result, whole_events) = run(&config, &whole, false);
        result.unwrap();

        let split = dir.path().join("split");
        let control = TrainControl::default();
        let stopper = control.clone();
        let mut on_event = |e: TrainEvent| {
            if let TrainEvent::Step { step: 6, .. } = e {
                stopper.request_stop();
            }
        };
        let first = train(
            &synthetic_data(),
            &config,
            &split,
            false,
            &control,
            &mut on_event,
        )
        .unwrap();
        assert!(first.stopped_early);
        assert_eq!(first.step, 6);
        let (second, resumed_events) = run(&config, &split, true);
        assert_eq!(second.unwrap().step, 12);

        // The weights, AdamW's moments and the loss of every step after the resume: identical
        // bits, not merely close.
        for file in [checkpoint::MODEL_FILE, checkpoint::OPTIMIZER_FILE] {
            let (a, b) = (tensor_bits(&whole, file), tensor_bits(&split, file));
            assert_eq!(a.len(), b.len());
            for ((name, x), (_, y)) in a.iter().zip(&b) {
                assert!(x == y, "{kind}: {file} {name} differs after the resume");
            }
        }
        let after: Vec<_> = step_losses(&whole_events)
            .into_iter()
            .filter(|(s, _)| *s > 6)
            .collect();
        assert_eq!(after.len(), 6);
        assert_eq!(
            step_losses(&resumed_events),
            after,
            "{kind}: losses after the resume"
        );
    }
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    run(&tiny(ModelKind::Lstm, 2), &out, false).0.unwrap();
    let mut w = weights(&out);
    w.insert(
        "lstm.weight_hh_l1".into(),
        Tensor::zeros((128, 31), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&w, out.join("model.safetensors")).unwrap();
    let err = load_for_inference(&out, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("lstm.weight_hh_l1") && err.contains("[128, 31]") && err.contains("[128, 32]"),
        "{err}"
    );
}

#[test]
fn missing_and_corrupt_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_for_inference(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no config.json"), "{err}");
    let out = dir.path().join("ckpt");
    run(&tiny(ModelKind::Lstm, 1), &out, false).0.unwrap();
    std::fs::write(out.join("model.safetensors"), b"not tensors").unwrap();
    let err = load_for_inference(&out, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::write(out.join("config.json"), b"{").unwrap();
    let err = load_for_inference(&out, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn a_diverging_run_fails_and_keeps_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    let mut config = tiny(ModelKind::Lstm, 200);
    // Decay of (1 - lr x weight decay) = -9 per step: the weights pass f32's range within
    // about 40 steps, and the update that would make them infinite is refused.
    config.lr = 10.0;
    config.weight_decay = 1.0;
    config.warmup = 0;
    config.checkpoint_every = 1;
    let (result, events) = run(&config, &out, false);
    let err = result.expect_err("the run diverges");
    let TrainError::NonFinite { step: failed, .. } = err else {
        panic!("expected a divergence, got: {err}");
    };
    assert!(matches!(events.last(), Some(TrainEvent::Failed { .. })));
    // The checkpoint is the last step whose update was finite: nothing after it was written.
    let meta = checkpoint::read_meta(&out).unwrap();
    assert_eq!(meta.step, failed - 1);
    assert!(meta.step >= 1 && meta.step < 200);
    // What was saved is the last finite state, and it loads.
    assert!(load_for_inference(&out, &Device::Cpu).is_ok());
}

#[test]
fn refuses_to_overwrite_or_to_resume_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    let (result, _) = run(&tiny(ModelKind::Lstm, 1), &out, true);
    assert!(
        result
            .err()
            .unwrap()
            .to_string()
            .contains("holds no checkpoint")
    );
    run(&tiny(ModelKind::Lstm, 1), &out, false).0.unwrap();
    let (result, _) = run(&tiny(ModelKind::Lstm, 1), &out, false);
    assert!(result.err().unwrap().to_string().contains("--resume"));
}

#[test]
fn generation_is_seeded_streamed_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    run(&tiny(ModelKind::LstmAttention, 30), &out, false)
        .0
        .unwrap();
    let (model, _) = load_for_inference(&out, &Device::Cpu).unwrap();
    let config = GenerateConfig {
        max_seconds: 4.0,
        max_events: 400,
        seed: 11,
        variations: 2,
        temperature: 1.2,
        top_p: Some(0.98),
        ..GenerateConfig::default()
    };
    let cancel = AtomicBool::new(false);
    let mut streamed = 0;
    let a = generate(&model, None, &config, &cancel, &mut |_| streamed += 1).unwrap();
    let b = generate(&model, None, &config, &cancel, &mut |_| {}).unwrap();
    assert_eq!(a, b, "same seed, same output");
    assert_eq!(streamed, a.iter().map(|t| t.events.len()).sum::<usize>());
    assert_ne!(a[0].events, a[1].events, "variations differ");
    let c = generate(
        &model,
        None,
        &GenerateConfig {
            seed: 12,
            ..config.clone()
        },
        &cancel,
        &mut |_| {},
    )
    .unwrap();
    assert_ne!(a[0].events, c[0].events, "different seeds differ");

    // A primer is continued after its end.
    let primer = echoai::tokenizer::decode(&synthetic_data().train[..40]);
    let primed = generate(&model, Some(&primer), &config, &cancel, &mut |_| {}).unwrap();
    assert!(primed[0].primer_seconds > 0.0);
    assert!(primed[0].performance.notes.len() >= primer.notes.len());

    // Cancelling stops it.
    let cancelled = generate(&model, None, &config, &AtomicBool::new(true), &mut |_| {});
    assert!(matches!(
        cancelled,
        Err(echoai::generate::GenerateError::Cancelled)
    ));

    // Every written file reads back through `echoai corpus`.
    let midi_dir = dir.path().join("midi");
    std::fs::create_dir(&midi_dir).unwrap();
    for (i, take) in a.iter().enumerate() {
        echoai::midi::write_midi(&take.performance, &midi_dir.join(format!("take{i}.mid")))
            .unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_echoai"))
        .args(["corpus", midi_dir.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["files_ok"], 2);
    assert_eq!(json["files_failed"], 0);
}
