//! The CUDA engine (feature `cuda`) against PyTorch's fixture and against the CPU. These need an
//! NVIDIA GPU: `.ci/gpu-check.sh` builds and runs them on a lent one. CI builds the default
//! features, which compile this file to nothing.
#![cfg(feature = "cuda")]

mod common;

use std::collections::HashMap;

use common::max_rel_err;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use echoai::model::{ModelConfig, ModelKind, MusicModel, Recurrence};
use echoai::optim::{AdamW, AdamWConfig};

fn cuda() -> Device {
    Device::new_cuda(0).expect("these tests need an NVIDIA GPU and its driver")
}

/// A trainable model on `device` whose variables hold `weights`.
fn model_with(
    config: &ModelConfig,
    weights: &HashMap<String, Tensor>,
    device: &Device,
) -> (MusicModel, VarMap) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model = MusicModel::new(config, vb).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&weights[name].to_device(device).unwrap()).unwrap();
    }
    (model, varmap)
}

/// Freshly initialised weights (the trainer's initialisation) for `config`, on the CPU.
fn initial_weights(config: &ModelConfig, seed: u64) -> HashMap<String, Tensor> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    MusicModel::new(config, vb).unwrap();
    echoai::model::init::initialize(&varmap, config, seed).unwrap();
    echoai::model::checkpoint::varmap_tensors(&varmap)
}

/// Every parameter's gradient, on the CPU, by name.
fn grads_by_name(varmap: &VarMap, grads: &GradStore) -> HashMap<String, Tensor> {
    let vars = varmap.data().lock().unwrap();
    vars.iter()
        .map(|(name, var)| {
            let grad = grads
                .get(var.as_tensor())
                .expect("every parameter gets a gradient");
            (name.clone(), grad.to_device(&Device::Cpu).unwrap())
        })
        .collect()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[0]
}

#[test]
fn pytorch_fixture_logits_loss_and_every_gradient_match_on_cuda() {
    let dev = cuda();
    let f = candle_core::safetensors::load("tests/fixtures/lstm_parity.safetensors", &Device::Cpu)
        .expect("fixture loads");
    let config = ModelConfig {
        kind: ModelKind::Lstm,
        embed: 8,
        hidden: 16,
        layers: 2,
        dropout: 0.0,
        ..ModelConfig::default()
    };
    let ids = f["input.ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_device(&dev)
        .unwrap();
    for recurrence in [Recurrence::Auto, Recurrence::Composed] {
        let (model, varmap) = model_with(&config, &f, &dev);
        let logits = model.forward_with(&ids, None, recurrence).unwrap();
        let err = max_rel_err(
            &logits.to_device(&Device::Cpu).unwrap(),
            &f["expect.logits_zero_state"],
        );
        println!("cuda {recurrence:?} logits: max error {err:.2e}");
        assert!(err < 1e-5, "{recurrence:?} logits: {err}");
        let target = ids.narrow(1, 1, 6).unwrap().flatten_all().unwrap();
        let inputs = ids.narrow(1, 0, 6).unwrap();
        let loss = model.loss_with(&inputs, &target, None, recurrence).unwrap();
        let (got, expect) = (scalar(&loss), scalar(&f["expect.loss"]));
        println!("cuda {recurrence:?} loss {got} vs PyTorch {expect}");
        assert!(
            (got - expect).abs() / expect < 1e-5,
            "{recurrence:?} loss {got} vs {expect}"
        );
        let grads = loss.backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        assert_eq!(vars.len(), 11);
        for (name, var) in vars.iter() {
            let grad = grads
                .get(var.as_tensor())
                .expect("every parameter gets a gradient");
            let err = max_rel_err(
                &grad.to_device(&Device::Cpu).unwrap(),
                &f[&format!("expect.grad.{name}")],
            );
            assert!(err < 1e-4, "{recurrence:?} grad {name}: {err}");
        }
    }
}

fn sized(kind: ModelKind) -> ModelConfig {
    ModelConfig {
        kind,
        embed: 48,
        hidden: 96,
        layers: 2,
        dropout: 0.0,
        window: 16,
        heads: 4,
        ..ModelConfig::default()
    }
}

/// Ids `[B, T + 1]` in a fixed pattern that a small model learns within a few steps.
fn batch(b: usize, t: usize, device: &Device) -> (Tensor, Tensor) {
    let ids: Vec<u32> = (0..b * (t + 1))
        .map(|i| ((i * 7 + i / 5) % 390) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (b, t + 1), device).unwrap();
    let inputs = ids.narrow(1, 0, t).unwrap();
    let targets = ids.narrow(1, 1, t).unwrap().flatten_all().unwrap();
    (inputs, targets)
}

#[test]
fn every_parameter_gradient_matches_the_cpu_for_both_models() {
    let dev = cuda();
    for kind in [ModelKind::Lstm, ModelKind::LstmAttention] {
        let config = sized(kind);
        let weights = initial_weights(&config, 11);
        let mut grads_of = Vec::new();
        for device in [Device::Cpu, dev.clone()] {
            let (model, varmap) = model_with(&config, &weights, &device);
            let (inputs, targets) = batch(6, 40, &device);
            let loss = model.loss(&inputs, &targets, None).unwrap();
            let grads = loss.backward().unwrap();
            grads_of.push((scalar(&loss), grads_by_name(&varmap, &grads)));
        }
        let (cpu, gpu) = (&grads_of[0], &grads_of[1]);
        println!("{} loss: cpu {} cuda {}", kind.name(), cpu.0, gpu.0);
        assert!(
            (cpu.0 - gpu.0).abs() < 1e-5,
            "{} loss {} vs {}",
            kind.name(),
            cpu.0,
            gpu.0
        );
        let mut worst = (0.0f64, String::new());
        for (name, g) in &cpu.1 {
            let err = max_rel_err(&gpu.1[name], g);
            if err > worst.0 {
                worst = (err, name.clone());
            }
            assert!(
                err < 1e-4,
                "{} grad {name}: relative error {err}",
                kind.name()
            );
        }
        println!(
            "{}: {} gradients, worst relative error {:.2e} ({})",
            kind.name(),
            cpu.1.len(),
            worst.0,
            worst.1
        );
    }
}

#[test]
fn fifteen_adamw_steps_follow_the_cpu_loss_curve_for_both_models() {
    let dev = cuda();
    for kind in [ModelKind::Lstm, ModelKind::LstmAttention] {
        let config = sized(kind);
        let weights = initial_weights(&config, 5);
        let mut curves = Vec::new();
        for device in [Device::Cpu, dev.clone()] {
            let (model, varmap) = model_with(&config, &weights, &device);
            let mut opt = AdamW::new(
                varmap.data().lock().unwrap().clone(),
                AdamWConfig::default(),
            )
            .unwrap();
            let (inputs, targets) = batch(4, 32, &device);
            let mut losses = Vec::new();
            for _ in 0..15 {
                let loss = model.loss(&inputs, &targets, None).unwrap();
                losses.push(scalar(&loss));
                opt.step(&loss.backward().unwrap(), 3e-3, 3.0).unwrap();
            }
            curves.push(losses);
        }
        println!(
            "{} cpu  {:?}\n{} cuda {:?}",
            kind.name(),
            curves[0],
            kind.name(),
            curves[1]
        );
        assert!(
            curves[1][14] < curves[1][0] - 0.5,
            "it learns on CUDA: {:?}",
            curves[1]
        );
        for (step, (a, b)) in curves[0].iter().zip(&curves[1]).enumerate() {
            assert!(
                (a - b).abs() < 1e-3,
                "{} step {step}: cpu {a} cuda {b}",
                kind.name()
            );
        }
    }
}

#[test]
fn a_long_sequence_and_a_large_batch_match_the_composed_recurrence_on_cuda() {
    // Beyond one thread block per step and with state carried over hundreds of steps.
    let dev = cuda();
    let config = ModelConfig {
        kind: ModelKind::Lstm,
        embed: 64,
        hidden: 256,
        layers: 2,
        dropout: 0.0,
        ..ModelConfig::default()
    };
    let weights = initial_weights(&config, 3);
    let (model, varmap) = model_with(&config, &weights, &dev);
    let (inputs, targets) = batch(64, 300, &dev);
    let mut results = Vec::new();
    for recurrence in [Recurrence::Auto, Recurrence::Composed] {
        let loss = model
            .loss_with(&inputs, &targets, None, recurrence)
            .unwrap();
        let grads = loss.backward().unwrap();
        results.push((scalar(&loss), grads_by_name(&varmap, &grads)));
    }
    assert!(
        (results[0].0 - results[1].0).abs() < 1e-5,
        "loss {} vs {}",
        results[0].0,
        results[1].0
    );
    for (name, g) in &results[1].1 {
        let err = max_rel_err(&results[0].1[name], g);
        assert!(err < 1e-4, "grad {name}: {err}");
    }
}
