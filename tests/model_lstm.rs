//! The LSTM stack against PyTorch (the fixture) and the fused recurrence against the composed one.

mod common;

use std::collections::HashMap;

use common::max_rel_err;

use candle_core::{D, DType, Device, IndexOp, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use echoai::model::{
    FusedLstmOp, LayerInput, LstmStack, LstmState, ModelConfig, ModelKind, MusicModel, Recurrence,
    Stepper, TeamSplit, WeightPrecision,
};
use echoai::rng::Rng;

const FIXTURE: &str = "tests/fixtures/lstm_parity.safetensors";

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(FIXTURE, &Device::Cpu).expect("fixture loads")
}

fn parity_config() -> ModelConfig {
    ModelConfig {
        kind: ModelKind::Lstm,
        embed: 8,
        hidden: 16,
        layers: 2,
        dropout: 0.0,
        ..ModelConfig::default()
    }
}

/// A trainable model whose variables hold the fixture's weights.
fn model_from_fixture(f: &HashMap<String, Tensor>) -> (MusicModel, VarMap) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = MusicModel::new(&parity_config(), vb).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&f[name]).unwrap();
    }
    (model, varmap)
}

fn stack_from_fixture(f: &HashMap<String, Tensor>) -> LstmStack {
    let vb = VarBuilder::from_tensors(f.clone(), DType::F32, &Device::Cpu);
    LstmStack::new(8, 16, 2, 0.0, &vb.pp("lstm")).unwrap()
}

fn state_from(h: &Tensor, c: &Tensor) -> LstmState {
    LstmState {
        h: (0..2).map(|l| h.get(l).unwrap()).collect(),
        c: (0..2).map(|l| c.get(l).unwrap()).collect(),
    }
}

#[test]
fn lstm_outputs_and_states_match_pytorch() {
    let f = fixture();
    let ids = f["input.ids"].to_dtype(DType::U32).unwrap();
    let x = f["embedding.weight"]
        .index_select(&ids.flatten_all().unwrap(), 0)
        .unwrap()
        .reshape((3, 7, 8))
        .unwrap();
    let stack = stack_from_fixture(&f);
    let zero = LstmState::zeros(2, 3, 16, &Device::Cpu).unwrap();
    let given = state_from(&f["input.h0"], &f["input.c0"]);
    for recurrence in [Recurrence::Auto, Recurrence::Composed] {
        for (state, suffix) in [(&zero, "zero_state"), (&given, "given_state")] {
            let (out, last) = stack.forward(&x, state, recurrence, None).unwrap();
            let err = max_rel_err(&out, &f[&format!("expect.output_{suffix}")]);
            assert!(err < 1e-5, "{recurrence:?} {suffix} output: {err}");
            let h_n = Tensor::stack(&last.h, 0).unwrap();
            let c_n = Tensor::stack(&last.c, 0).unwrap();
            let err = max_rel_err(&h_n, &f[&format!("expect.h_n_{suffix}")]);
            assert!(err < 1e-5, "{recurrence:?} {suffix} h_n: {err}");
            let err = max_rel_err(&c_n, &f[&format!("expect.c_n_{suffix}")]);
            assert!(err < 1e-5, "{recurrence:?} {suffix} c_n: {err}");
        }
    }
}

#[test]
fn logits_loss_and_every_gradient_match_pytorch() {
    let f = fixture();
    let ids = f["input.ids"].to_dtype(DType::U32).unwrap();
    for recurrence in [Recurrence::Auto, Recurrence::Composed] {
        let (model, varmap) = model_from_fixture(&f);
        let logits = model.forward_with(&ids, None, recurrence).unwrap();
        let err = max_rel_err(&logits, &f["expect.logits_zero_state"]);
        assert!(err < 1e-5, "{recurrence:?} logits: {err}");
        // The loss through `loss_with`: Auto fuses the output layer and the cross-entropy.
        let target = ids.narrow(1, 1, 6).unwrap().flatten_all().unwrap();
        let inputs = ids.narrow(1, 0, 6).unwrap();
        let loss = model.loss_with(&inputs, &target, None, recurrence).unwrap();
        let expect = f["expect.loss"]
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[0];
        let got = loss
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
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
            let err = max_rel_err(grad, &f[&format!("expect.grad.{name}")]);
            assert!(err < 1e-4, "{recurrence:?} grad {name}: {err}");
        }
    }
}

/// Random layer inputs and weights for the fused-vs-composed comparisons.
fn random_setup(
    batch: usize,
    time: usize,
    input: usize,
    hidden: usize,
    seed: u64,
) -> (VarMap, Var, LstmState) {
    let mut rng = echoai::rng::Rng::new(seed);
    let mut rand = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    let varmap = VarMap::new();
    {
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        LstmStack::new(input, hidden, 2, 0.0, &vb).unwrap();
    }
    // By name: the map's own order changes from process to process, and so would the weights.
    let vars = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        var.set(&(rand(var.dims()) * 0.5).unwrap()).unwrap();
    }
    drop(vars);
    let x = Var::from_tensor(&rand(&[batch, time, input])).unwrap();
    let state = LstmState {
        h: (0..2)
            .map(|_| {
                Var::from_tensor(&rand(&[batch, hidden]))
                    .unwrap()
                    .as_tensor()
                    .clone()
            })
            .collect(),
        c: (0..2)
            .map(|_| {
                Var::from_tensor(&rand(&[batch, hidden]))
                    .unwrap()
                    .as_tensor()
                    .clone()
            })
            .collect(),
    };
    (varmap, x, state)
}

#[test]
fn fused_matches_composed_outputs_states_and_gradients() {
    // Hidden sizes of one panel (10) and of several ragged ones (70 = 32 + 32 + 6: a team of
    // threads, each owning whole panels); batches that leave partial register tiles.
    for &(batch, time, with_state, hidden) in &[
        (1, 1, false, 10),
        (2, 5, true, 10),
        (4, 17, false, 10),
        (3, 33, true, 10),
        (13, 9, true, 70),
        (16, 4, false, 70),
    ] {
        let seed = batch as u64 * 31 + time as u64;
        let (varmap, x, state0) = random_setup(batch, time, 6, hidden, seed);
        let state = if with_state {
            state0.clone()
        } else {
            LstmState::zeros(2, batch, hidden, &Device::Cpu).unwrap()
        };
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let stack = LstmStack::new(6, hidden, 2, 0.0, &vb).unwrap();
        let weights = Tensor::arange(0f32, (batch * time * hidden) as f32, &Device::Cpu)
            .unwrap()
            .reshape((batch, time, hidden))
            .unwrap()
            .sin()
            .unwrap();
        let mut results = Vec::new();
        for recurrence in [Recurrence::Composed, Recurrence::Auto] {
            let (out, last) = stack
                .forward(x.as_tensor(), &state, recurrence, None)
                .unwrap();
            // A scalar that depends on every output and on both final states.
            let loss = ((&out * &weights).unwrap().sum_all().unwrap()
                + last.h[1].sum_all().unwrap()
                + (last.c[0].sqr().unwrap().sum_all().unwrap() * 0.5).unwrap())
            .unwrap();
            let grads = loss.backward().unwrap();
            // The outputs and states themselves, not the loss: a sum of terms of both signs can
            // cancel to near zero, and its relative error then says nothing about the parts.
            let mut tensors = vec![out.clone(), grads.get(x.as_tensor()).unwrap().clone()];
            tensors.extend(last.h.iter().chain(&last.c).cloned());
            let vars = varmap.data().lock().unwrap();
            let mut names: Vec<&String> = vars.keys().collect();
            names.sort();
            for name in names {
                tensors.push(grads.get(vars[name].as_tensor()).unwrap().clone());
            }
            if with_state {
                for t in state.h.iter().chain(&state.c) {
                    tensors.push(grads.get(t).expect("state gradient").clone());
                }
            }
            results.push(tensors);
        }
        for (i, (a, b)) in results[1].iter().zip(&results[0]).enumerate() {
            let err = max_rel_err(a, b);
            assert!(
                err < 1e-5,
                "b={batch} t={time} h={hidden} state={with_state} tensor {i}: {err}"
            );
        }
    }
}

#[test]
fn fused_gradients_match_finite_differences() {
    // A tiny layer; central differences in f32 with a step of 1e-2 agree to about 1e-3.
    let (varmap, x, state) = random_setup(2, 4, 3, 4, 99);
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let stack = LstmStack::new(3, 4, 2, 0.0, &vb).unwrap();
    let objective = |stack: &LstmStack| {
        let (out, last) = stack
            .forward(x.as_tensor(), &state, Recurrence::Auto, None)
            .unwrap();
        (out.sqr().unwrap().sum_all().unwrap() + last.c[1].sum_all().unwrap()).unwrap()
    };
    let loss = objective(&stack);
    let grads = loss.backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    for name in ["weight_hh_l0", "weight_ih_l1", "bias_hh_l0", "weight_hh_l1"] {
        let var = &vars[name];
        let analytic = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for idx in [0, base.len() / 3, base.len() - 1] {
            let eps = 1e-2f32;
            let eval_at = |delta: f32| {
                let mut v = base.clone();
                v[idx] += delta;
                var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                objective(&stack).to_scalar::<f32>().unwrap()
            };
            let numeric = (eval_at(eps) - eval_at(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(base.clone(), var.dims(), &Device::Cpu).unwrap())
                .unwrap();
            let diff = (numeric - analytic[idx]).abs();
            assert!(
                diff < 2e-3 * (1.0 + analytic[idx].abs()),
                "{name}[{idx}]: numeric {numeric} analytic {}",
                analytic[idx]
            );
        }
    }
}

/// A model of `config` with candle's default initial weights, and the map that holds them.
fn fresh_model(config: &ModelConfig) -> (VarMap, MusicModel) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = MusicModel::new(config, vb).unwrap();
    (varmap, model)
}

/// Sets every attention `rel_bias` entry to `value(flat index)`.
fn set_relative_bias(varmap: &VarMap, value: impl Fn(usize) -> f32) {
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.ends_with("rel_bias") {
            let values: Vec<f32> = (0..var.elem_count()).map(&value).collect();
            let t = Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap();
            var.set(&t).unwrap();
        }
    }
}

#[test]
fn step_by_step_equals_whole_sequence_for_both_models() {
    // Hidden 20: 4H = 80 columns, so the stepper's last weight panel is ragged.
    for (kind, hidden) in [
        (ModelKind::Lstm, 16),
        (ModelKind::LstmAttention, 16),
        (ModelKind::Lstm, 20),
    ] {
        let config = ModelConfig {
            kind,
            embed: 8,
            hidden,
            layers: 2,
            window: 4,
            heads: 2,
            dropout: 0.0,
            ..ModelConfig::default()
        };
        let (varmap, model) = fresh_model(&config);
        // Non-zero attention bias, so the relative positions matter.
        set_relative_bias(&varmap, |i| i as f32 * 0.3);
        let ids: Vec<u32> = (0..2 * 11).map(|i| (i * 37 % 390) as u32).collect();
        let ids = Tensor::from_vec(ids, (2, 11), &Device::Cpu).unwrap();
        let whole = model.forward(&ids, None).unwrap();
        let mut state = model.zero_state(2).unwrap();
        let mut f32_stepper = Stepper::new(&model, 2, WeightPrecision::F32).unwrap();
        let mut bf16_stepper = Stepper::new(&model, 2, WeightPrecision::Bf16).unwrap();
        for t in 0..11 {
            let expect = whole.i((.., t)).unwrap();
            let step = model.step(&ids.i((.., t)).unwrap(), &mut state).unwrap();
            let err = max_rel_err(&step, &expect);
            assert!(err < 1e-5, "{kind} step {t}: {err}");
            let column: Vec<u32> = ids.i((.., t)).unwrap().to_vec1().unwrap();
            let fast = f32_stepper.step(&column).unwrap().to_vec();
            let fast = Tensor::from_vec(fast, (2, 390), &Device::Cpu).unwrap();
            let err = max_rel_err(&fast, &expect);
            assert!(err < 1e-5, "{kind} h={hidden} stepper step {t}: {err}");
            let half = bf16_stepper.step(&column).unwrap().to_vec();
            let half = Tensor::from_vec(half, (2, 390), &Device::Cpu).unwrap();
            let err = max_rel_err(&half, &expect);
            // bfloat16 keeps 8 bits of mantissa: about 0.4 % per weight.
            assert!(err < 2e-2, "{kind} h={hidden} bf16 stepper step {t}: {err}");
            assert!(err > 0.0, "bf16 weights must differ from f32 somewhere");
        }
    }
}

#[test]
fn attention_is_causal_and_local() {
    let config = ModelConfig {
        kind: ModelKind::LstmAttention,
        embed: 8,
        hidden: 16,
        layers: 1,
        window: 3,
        heads: 2,
        dropout: 0.0,
        ..ModelConfig::default()
    };
    let (_varmap, model) = fresh_model(&config);
    let base: Vec<u32> = (0..12).map(|i| (i * 29 % 390) as u32).collect();
    let logits = |ids: &[u32]| {
        model
            .forward(
                &Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap(),
                None,
            )
            .unwrap()
            .squeeze(0)
            .unwrap()
    };
    let before = logits(&base);
    // Changing the future leaves the past alone.
    let mut future = base.clone();
    future[8] = 5;
    future[11] = 200;
    let after = logits(&future);
    assert!(
        max_rel_err(
            &after.narrow(0, 0, 8).unwrap(),
            &before.narrow(0, 0, 8).unwrap()
        ) < 1e-6
    );
    assert!(max_rel_err(&after.i(8).unwrap(), &before.i(8).unwrap()) > 1e-4);

    // Only the attention is local; the LSTM still carries the past. So compare the attention
    // block alone on hidden states: positions more than W back do not affect position t.
    let attention = echoai::model::LocalAttention::new(
        16,
        2,
        3,
        &VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu),
    )
    .unwrap();
    let mut rng = echoai::rng::Rng::new(5);
    let h: Vec<f32> = (0..10 * 16).map(|_| rng.next_f32() - 0.5).collect();
    let h = Tensor::from_vec(h, (1, 10, 16), &Device::Cpu).unwrap();
    let out = attention.forward(&h).unwrap();
    // Perturb position 5: outputs 5, 6, 7 (within W = 3) change, 8 and 9 do not, nor 0..5.
    let bump = Tensor::zeros((1, 10, 16), DType::F32, &Device::Cpu)
        .unwrap()
        .slice_assign(
            &[0..1, 5..6, 0..16],
            &Tensor::ones((1, 1, 16), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
    let out2 = attention.forward(&(&h + bump).unwrap()).unwrap();
    let diff = (out2 - &out)
        .unwrap()
        .abs()
        .unwrap()
        .max(D::Minus1)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (t, d) in diff.iter().enumerate() {
        if (5..8).contains(&t) {
            assert!(*d > 1e-4, "position {t} should see position 5: {diff:?}");
        } else {
            assert!(*d < 1e-6, "position {t} must not see position 5: {diff:?}");
        }
    }
}

#[test]
fn fused_and_composed_training_give_the_same_loss_curve() {
    use echoai::optim::{AdamW, AdamWConfig};
    let config = ModelConfig {
        kind: ModelKind::Lstm,
        embed: 12,
        hidden: 24,
        layers: 2,
        dropout: 0.0,
        ..ModelConfig::default()
    };
    let ids: Vec<u32> = (0..4 * 17).map(|i| (i * 7 % 390) as u32).collect();
    let ids = Tensor::from_vec(ids, (4, 17), &Device::Cpu).unwrap();
    let mut curves = Vec::new();
    for recurrence in [Recurrence::Auto, Recurrence::Composed] {
        let (varmap, model) = fresh_model(&config);
        echoai::model::init::initialize(&varmap, &config, 5).unwrap();
        let mut opt = AdamW::new(
            varmap.data().lock().unwrap().clone(),
            AdamWConfig::default(),
        )
        .unwrap();
        let mut losses = Vec::new();
        for _ in 0..15 {
            let loss = model
                .loss_with(
                    &ids.narrow(1, 0, 16).unwrap(),
                    &ids.narrow(1, 1, 16).unwrap().flatten_all().unwrap(),
                    None,
                    recurrence,
                )
                .unwrap();
            losses.push(loss.to_scalar::<f32>().unwrap());
            opt.step(&loss.backward().unwrap(), 1e-2, 3.0).unwrap();
        }
        curves.push(losses);
    }
    assert!(
        curves[0][14] < curves[0][0] - 1.0,
        "it learns: {:?}",
        curves[0]
    );
    for (a, b) in curves[0].iter().zip(&curves[1]) {
        assert!((a - b).abs() < 1e-4, "{:?}\n{:?}", curves[0], curves[1]);
    }
}

/// `("loss", loss)`, then every variable's gradient by name, in name order.
fn loss_and_gradients(loss: &Tensor, varmap: &VarMap) -> Vec<(String, Tensor)> {
    let grads = loss.backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut tensors = vec![("loss".to_string(), loss.clone())];
    for name in names {
        let grad = grads.get(vars[name].as_tensor()).expect("a gradient");
        tensors.push((name.clone(), grad.clone()));
    }
    tensors
}

/// The model's own backward pass on the CPU (`training_loss`) gives the loss and every gradient
/// of candle's autograd bit for bit: both kinds, one to three layers, dropout between them,
/// ragged sizes, heads of 64 features and of a few.
#[test]
fn the_direct_backward_pass_has_the_bits_of_candles() {
    use ModelKind::{Lstm, LstmAttention};
    let cases = [
        (Lstm, 3, 0.3, 70, 3, 41),
        (Lstm, 1, 0.0, 16, 2, 5),
        (Lstm, 2, 0.5, 33, 5, 17),
        (LstmAttention, 2, 0.2, 128, 3, 90),
        (LstmAttention, 1, 0.0, 18, 2, 13),
    ];
    for (kind, layers, dropout, hidden, batch, time) in cases {
        let config = ModelConfig {
            kind,
            embed: 12,
            hidden,
            layers,
            dropout,
            window: 6.min(time),
            heads: 2,
            ..ModelConfig::default()
        };
        let (varmap, model) = fresh_model(&config);
        echoai::model::init::initialize(&varmap, &config, 5).unwrap();
        set_relative_bias(&varmap, |i| (i as f32 * 0.3).cos());
        let ids: Vec<u32> = (0..batch * (time + 1))
            .map(|i| (i * 97 % 390) as u32)
            .collect();
        let ids = Tensor::from_vec(ids, (batch, time + 1), &Device::Cpu).unwrap();
        let inputs = ids.narrow(1, 0, time).unwrap();
        let targets = ids.narrow(1, 1, time).unwrap().flatten_all().unwrap();
        let loss = model
            .loss(&inputs, &targets, Some(&mut Rng::new(11)))
            .unwrap();
        let by_candle = loss_and_gradients(&loss, &varmap);
        let objective = model
            .training_loss(&inputs, &targets, Some(&mut Rng::new(11)))
            .unwrap();
        let loss = objective.loss().clone();
        let grads = objective.gradients().unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            values.iter().map(|v| v.to_bits()).collect()
        };
        let vars = varmap.data().lock().unwrap();
        for (name, want) in &by_candle {
            let got = match name.as_str() {
                "loss" => &loss,
                _ => grads.get(vars[name].as_tensor()).expect("a gradient"),
            };
            assert_eq!(got.dims(), want.dims(), "{kind} {layers} layers: {name}");
            assert_eq!(bits(got), bits(want), "{kind} {layers} layers: {name}");
        }
        // Every weight got one: the lists match name for name.
        assert_eq!(by_candle.len(), vars.len() + 1);
    }
}

/// The fused loss skips its own cell-state rows by a reserved target; a caller's target with that
/// value, or any other outside the vocabulary, is an error, not a skipped row.
#[test]
fn a_target_outside_the_vocabulary_is_an_error_on_the_fused_path() {
    let config = ModelConfig {
        kind: ModelKind::Lstm,
        embed: 8,
        hidden: 16,
        layers: 2,
        dropout: 0.0,
        ..ModelConfig::default()
    };
    let (_varmap, model) = fresh_model(&config);
    let inputs = Tensor::from_vec(vec![1u32, 2, 3, 4, 5, 6], (2, 3), &Device::Cpu).unwrap();
    for bad in [390u32, u32::MAX] {
        let targets = Tensor::from_vec(vec![1u32, 2, bad, 4, 5, 6], 6, &Device::Cpu).unwrap();
        assert!(
            model
                .loss_with(&inputs, &targets, None, Recurrence::Auto)
                .is_err(),
            "target {bad}"
        );
        // The training path, with its own backward pass, refuses it too.
        assert!(
            model.training_loss(&inputs, &targets, None).is_err(),
            "target {bad}, training"
        );
    }
    // So does an input id outside the vocabulary, on both paths.
    let targets = Tensor::from_vec(vec![1u32, 2, 3, 4, 5, 6], 6, &Device::Cpu).unwrap();
    for bad in [390u32, u32::MAX] {
        let inputs = Tensor::from_vec(vec![1u32, 2, bad, 4, 5, 6], (2, 3), &Device::Cpu).unwrap();
        assert!(
            model
                .loss_with(&inputs, &targets, None, Recurrence::Auto)
                .is_err(),
            "input {bad}"
        );
        assert!(
            model.training_loss(&inputs, &targets, None).is_err(),
            "input {bad}, training"
        );
    }
}

/// Between fused layers each layer's whole output (its states and its final cell state) goes to
/// the next one and to the loss without a copy; dropout must draw the same masks as on the
/// composed path's states, and no gradient may leak through the cell-state rows.
#[test]
fn fused_and_composed_agree_with_dropout_between_three_layers() {
    let config = ModelConfig {
        kind: ModelKind::Lstm,
        embed: 12,
        hidden: 24,
        layers: 3,
        dropout: 0.3,
        ..ModelConfig::default()
    };
    let (varmap, model) = fresh_model(&config);
    echoai::model::init::initialize(&varmap, &config, 9).unwrap();
    let ids: Vec<u32> = (0..3 * 12).map(|i| (i * 11 % 390) as u32).collect();
    let ids = Tensor::from_vec(ids, (3, 12), &Device::Cpu).unwrap();
    let (inputs, targets) = (
        ids.narrow(1, 0, 11).unwrap(),
        ids.narrow(1, 1, 11).unwrap().flatten_all().unwrap(),
    );
    let results: Vec<_> = [Recurrence::Auto, Recurrence::Composed]
        .into_iter()
        .map(|recurrence| {
            let mut rng = echoai::rng::Rng::new(17);
            let loss = model
                .loss_with(&inputs, &targets, Some(&mut rng), recurrence)
                .unwrap();
            loss_and_gradients(&loss, &varmap)
        })
        .collect();
    let without_dropout = model
        .loss_with(&inputs, &targets, None, Recurrence::Auto)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let with_dropout = results[0][0].1.to_scalar::<f32>().unwrap();
    assert!(
        (with_dropout - without_dropout).abs() > 1e-4,
        "dropout is on: {with_dropout} vs {without_dropout}"
    );
    for ((name, fused), (_, composed)) in results[0].iter().zip(&results[1]) {
        let err = max_rel_err(fused, composed);
        assert!(err < 1e-4, "{name}: relative error {err}");
    }
}

#[test]
fn banded_attention_matches_the_masked_reference_with_every_gradient() {
    // Window 4 over 13 positions (the band matters) and window 16 over 9 (it does not); heads of
    // 64 features with a window of two key blocks, the second one partial (64 + 6 keys).
    for (window, time, hidden) in [(4, 13, 16), (16, 9, 16), (70, 90, 128)] {
        let config = ModelConfig {
            kind: ModelKind::LstmAttention,
            embed: 8,
            hidden,
            layers: 2,
            window,
            heads: 2,
            dropout: 0.0,
            ..ModelConfig::default()
        };
        let (varmap, model) = fresh_model(&config);
        echoai::model::init::initialize(&varmap, &config, 3).unwrap();
        set_relative_bias(&varmap, |i| (i as f32 * 0.2).sin());
        let ids: Vec<u32> = (0..3 * (time + 1)).map(|i| (i * 53 % 390) as u32).collect();
        let ids = Tensor::from_vec(ids, (3, time + 1), &Device::Cpu).unwrap();
        let inputs = ids.narrow(1, 0, time).unwrap();
        let targets = ids.narrow(1, 1, time).unwrap().flatten_all().unwrap();
        let results: Vec<_> = [Recurrence::Auto, Recurrence::Composed]
            .into_iter()
            .map(|recurrence| {
                let loss = model
                    .loss_with(&inputs, &targets, None, recurrence)
                    .unwrap();
                loss_and_gradients(&loss, &varmap)
            })
            .collect();
        for ((name, fast), (_, reference)) in results[0].iter().zip(&results[1]) {
            let err = max_rel_err(fast, reference);
            assert!(
                err < 1e-5,
                "window {window}, {time} positions, {name}: {err}"
            );
        }
    }
}

#[test]
fn the_shapes_a_checkpoint_is_checked_against_are_the_models_own() {
    for kind in [ModelKind::Lstm, ModelKind::LstmAttention] {
        let config = ModelConfig {
            kind,
            embed: 12,
            hidden: 20,
            layers: 3,
            window: 5,
            heads: 4,
            ..ModelConfig::default()
        };
        let (varmap, _) = fresh_model(&config);
        let mut built: Vec<(String, Vec<usize>)> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(name, var)| (name.clone(), var.dims().to_vec()))
            .collect();
        built.sort();
        assert_eq!(config.parameter_shapes(), built, "{kind}");
        let count: usize = built.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(config.parameter_count(), count);
    }
    // Sizes each within range can still ask for too many weights together.
    let huge = ModelConfig {
        hidden: 8192,
        layers: 16,
        ..ModelConfig::default()
    };
    let err = huge.validate().unwrap_err();
    assert!(err.contains("weights"), "{err}");
}

/// Batches of one tile, of whole tiles and of a ragged last tile; hidden sizes of one panel and of
/// ragged ones; vector, stacked (h with its cell-state row) and event-id inputs:
/// `(batch, time, input, hidden, kind)`.
const TEAM_CASES: [(usize, usize, usize, usize, LayerInput); 5] = [
    (5, 3, 6, 10, LayerInput::Dense),
    (16, 7, 6, 70, LayerInput::Dense),
    (21, 5, 9, 40, LayerInput::Dense),
    (24, 4, 12, 33, LayerInput::Stacked),
    (19, 6, 11, 48, LayerInput::Ids),
];

/// A fused layer's `x` (ids repeat, so that per-id sums add several rows), `w` and `extra`, and
/// weights for a loss over its output.
fn team_case_inputs(
    (batch, time, input, hidden, kind): (usize, usize, usize, usize, LayerInput),
) -> [Tensor; 4] {
    let seed = (batch * 1000 + hidden) as u64;
    let x = match kind {
        LayerInput::Dense => common::random(&[batch, time, input], seed),
        LayerInput::Stacked => common::random(&[batch, time + 1, input], seed),
        LayerInput::Ids => {
            let ids: Vec<u32> = (0..batch * time).map(|i| (i * 7 % input) as u32).collect();
            Tensor::from_vec(ids, (batch, time), &Device::Cpu).unwrap()
        }
    };
    let w = common::random(&[4 * hidden, input + hidden], seed + 1);
    let extra = common::random(&[4 * hidden + 2 * batch * hidden], seed + 2);
    let weights = common::random(&[batch, time + 1, hidden], seed + 3);
    [x, w, extra, weights]
}

#[test]
fn the_forward_team_gives_the_same_bits_split_by_rows_or_by_units() {
    for case in TEAM_CASES {
        let (batch, time, _, hidden, kind) = case;
        let [x, w, extra, _] = team_case_inputs(case);
        let outputs: Vec<Vec<u32>> = [TeamSplit::Units, TeamSplit::Rows]
            .into_iter()
            .map(|split| {
                let op = FusedLstmOp::new(false, kind).with_team_split(split);
                let out = x.apply_op3(&w, &extra, op).unwrap();
                assert_eq!(out.dims(), &[batch, time + 1, hidden]);
                common::bits(&out)
            })
            .collect();
        assert_eq!(
            outputs[0], outputs[1],
            "{kind:?} b={batch} t={time} h={hidden}"
        );
        assert!(outputs[0].iter().any(|&bits| bits != 0));
    }
}

#[test]
fn the_backward_team_gives_the_same_bits_split_by_rows_or_by_units() {
    // The per-id sums and the bias gradient are gathered in another place by each split; the
    // gradients of every input must match bit for bit.
    for case in TEAM_CASES {
        let (batch, _, _, hidden, kind) = case;
        let [x, w, extra, weights] = team_case_inputs(case);
        let dense = kind != LayerInput::Ids;
        let grads: Vec<Vec<Vec<u32>>> = [TeamSplit::Units, TeamSplit::Rows]
            .into_iter()
            .map(|split| {
                let x = if dense {
                    Var::from_tensor(&x).unwrap().as_tensor().clone()
                } else {
                    x.clone()
                };
                let (w, extra) = (
                    Var::from_tensor(&w).unwrap(),
                    Var::from_tensor(&extra).unwrap(),
                );
                let op = FusedLstmOp::new(true, kind).with_team_split(split);
                let out = x.apply_op3(w.as_tensor(), extra.as_tensor(), op).unwrap();
                let loss = (out * &weights).unwrap().sum_all().unwrap();
                let store = loss.backward().unwrap();
                let mut of = vec![w.as_tensor(), extra.as_tensor()];
                if dense {
                    of.push(&x);
                }
                of.into_iter()
                    .map(|v| common::bits(store.get(v).expect("a gradient")))
                    .collect()
            })
            .collect();
        for (which, (units, rows)) in grads[0].iter().zip(&grads[1]).enumerate() {
            assert_eq!(
                units, rows,
                "gradient {which}, {kind:?} b={batch} h={hidden}"
            );
            assert!(units.iter().any(|&bits| bits != 0));
        }
    }
}
