//! The `lstm-attention` model against an independent PyTorch implementation of the local
//! attention block as docs/ARCHITECTURE.md defines it (window, relative-bias indexing, scaling,
//! residual, LayerNorm epsilon): `tests/fixtures/make_attention_parity.py` wrote the fixture.

mod common;

use std::collections::HashMap;

use common::{max_rel_err, random};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use echoai::model::{ModelConfig, ModelKind, MusicModel, Recurrence};

const FIXTURE: &str = "tests/fixtures/attention_parity.safetensors";

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(FIXTURE, &Device::Cpu).expect("fixture loads")
}

fn config() -> ModelConfig {
    ModelConfig {
        kind: ModelKind::LstmAttention,
        embed: 8,
        hidden: 16,
        layers: 2,
        heads: 2,
        window: 3,
        dropout: 0.0,
        ..ModelConfig::default()
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn model_from_fixture(f: &HashMap<String, Tensor>) -> (MusicModel, VarMap) {
    let varmap = VarMap::new();
    let model = MusicModel::new(
        &config(),
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let weight = f
            .get(name)
            .unwrap_or_else(|| panic!("the fixture has no `{name}`"));
        var.set(weight).unwrap();
    }
    (model, varmap)
}

#[test]
fn logits_loss_and_every_gradient_match_pytorch_on_both_paths() {
    let f = fixture();
    let ids = f["input.ids"].to_dtype(DType::U32).unwrap();
    let (_, t) = ids.dims2().unwrap();
    for recurrence in [Recurrence::Auto, Recurrence::Composed] {
        let (model, varmap) = model_from_fixture(&f);
        let logits = model.forward_with(&ids, None, recurrence).unwrap();
        let err = max_rel_err(&logits, &f["expect.logits"]);
        assert!(err < 1e-5, "{recurrence:?} logits: {err}");

        let inputs = ids.narrow(1, 0, t - 1).unwrap();
        let targets = ids.narrow(1, 1, t - 1).unwrap().flatten_all().unwrap();
        let loss = model
            .loss_with(&inputs, &targets, None, recurrence)
            .unwrap();
        let (got, expect) = (values(&loss)[0], values(&f["expect.loss"])[0]);
        assert!(
            (got - expect).abs() / expect < 1e-5,
            "{recurrence:?} loss {got} vs {expect}"
        );
        let grads = loss.backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        assert_eq!(
            vars.len(),
            18,
            "embedding, 8 LSTM, 7 attention, 2 output tensors"
        );
        for (name, var) in vars.iter() {
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{recurrence:?}: no gradient for {name}"));
            let err = max_rel_err(grad, &f[&format!("expect.grad.{name}")]);
            assert!(err < 1e-4, "{recurrence:?} grad {name}: {err}");
        }
    }
}

#[test]
fn the_streaming_step_matches_pytorch_position_by_position() {
    let f = fixture();
    let (model, _) = model_from_fixture(&f);
    let ids = f["input.ids"].to_dtype(DType::U32).unwrap();
    let (b, t) = ids.dims2().unwrap();
    let mut state = model.zero_state(b).unwrap();
    for pos in 0..t {
        let column = ids.narrow(1, pos, 1).unwrap().flatten_all().unwrap();
        let logits = model.step(&column, &mut state).unwrap();
        state = state.detach();
        let expected = f["expect.logits"]
            .narrow(1, pos, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let err = max_rel_err(&logits, &expected);
        assert!(
            err < 1e-5,
            "position {pos} (window 3 wraps from position 3): {err}"
        );
    }
}

/// Run to run, every gradient is the same to the bit: per-sequence parts (the relative-bias
/// gradient, the loss) are summed in sequence order, not in the order rayon's threads finish.
#[test]
fn gradients_repeat_bit_for_bit_at_a_batch_of_many_sequences() {
    let (model, varmap) = model_from_fixture(&fixture());
    let (batch, time) = (13usize, 21usize);
    let ids: Vec<u32> = (0..batch * time).map(|i| (i * 37 % 390) as u32).collect();
    let targets: Vec<u32> = (0..batch * time).map(|i| (i * 11 % 390) as u32).collect();
    let ids = Tensor::from_vec(ids, (batch, time), &Device::Cpu).unwrap();
    let targets = Tensor::from_vec(targets, batch * time, &Device::Cpu).unwrap();
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    let run = || {
        let loss = model
            .loss_with(&ids, &targets, None, Recurrence::Auto)
            .unwrap();
        let grads = loss.backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        let bits = common::bits;
        let mut all = bits(&loss);
        for name in &names {
            all.extend(bits(grads.get(vars[name].as_tensor()).unwrap()));
        }
        all
    };
    let first = run();
    // More threads than cores, so that which thread finishes which sequences varies run to run.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(7)
        .build()
        .unwrap();
    for _ in 0..30 {
        assert!(
            pool.install(run) == first,
            "a gradient changed between identical runs"
        );
    }
}

/// The gradients of `sum(f(inputs) * weights)` for each input.
fn gradients(
    inputs: &[Tensor],
    weights: &Tensor,
    f: impl Fn(&[Tensor]) -> Tensor,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<candle_core::Var> = inputs
        .iter()
        .map(|t| candle_core::Var::from_tensor(t).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors);
    let store = (&out * weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grads = tensors
        .iter()
        .map(|t| store.get(t).unwrap().clone())
        .collect();
    (out, grads)
}

/// An op's output and gradients (from [`gradients`]) against the composed reference's: the shape
/// `dims`, the output within 1e-5 and each gradient within `grad_tol`, relative.
fn assert_matches(
    (ours, our_grads): (Tensor, Vec<Tensor>),
    (theirs, their_grads): (Tensor, Vec<Tensor>),
    dims: &[usize],
    grad_tol: f64,
    what: &str,
) {
    assert_eq!(ours.dims(), dims, "{what}");
    assert!(max_rel_err(&ours, &theirs) < 1e-5, "{what}");
    assert_eq!(our_grads.len(), their_grads.len(), "{what}");
    for (i, (a, b)) in our_grads.iter().zip(&their_grads).enumerate() {
        let err = max_rel_err(a, b);
        assert!(err < grad_tol, "gradient {i} of {what}: {err}");
    }
}

#[test]
fn the_dense_op_matches_candle_nn_linear_forward_and_backward() {
    // Rows and widths off every tile and vector size; a 3-d input as the attention passes it.
    for &(batch, time, input, output) in &[(3, 5, 7, 11), (4, 67, 64, 192), (1, 1, 33, 1)] {
        let seed = (batch * time * input + output) as u64;
        let x = random(&[batch, time, input], seed);
        let w = random(&[output, input], seed + 1);
        let b = random(&[output], seed + 2);
        let weights = random(&[batch, time, output], seed + 3);
        let linear = |t: &[Tensor]| candle_nn::Linear::new(t[1].clone(), Some(t[2].clone()));
        let (ours, our_grads) = gradients(&[x.clone(), w.clone(), b.clone()], &weights, |t| {
            echoai::model::dense(&t[0], &linear(t)).unwrap()
        });
        let (theirs, their_grads) = gradients(&[x, w, b], &weights, |t| {
            candle_nn::Module::forward(&linear(t), &t[0]).unwrap()
        });
        let what = format!("{input}->{output}");
        assert_matches(
            (ours, our_grads),
            (theirs, their_grads),
            &[batch, time, output],
            1e-5,
            &what,
        );
    }
}

#[test]
fn the_layer_norm_op_matches_the_composed_one_forward_and_backward() {
    // More rows than one part of the gain and shift sums (64), and a ragged last part.
    for &(batch, time, width) in &[(2, 3, 5), (3, 50, 96), (1, 1, 1)] {
        let seed = (batch * time + width) as u64;
        let x = (random(&[batch, time, width], seed) * 3.0).unwrap();
        let gain = random(&[width], seed + 1);
        let shift = random(&[width], seed + 2);
        let weights = random(&[batch, time, width], seed + 3);
        let inputs = [x, gain, shift];
        let (ours, our_grads) = gradients(&inputs, &weights, |t| {
            echoai::model::layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap()
        });
        let (theirs, their_grads) = gradients(&inputs, &weights, |t| {
            candle_nn::ops::layer_norm_slow(&t[0], &t[1], &t[2], 1e-5).unwrap()
        });
        let what = format!("width {width}");
        assert_matches(
            (ours, our_grads),
            (theirs, their_grads),
            &[batch, time, width],
            1e-4,
            &what,
        );
    }
}

#[test]
fn the_dense_and_layer_norm_ops_refuse_shapes_that_do_not_fit() {
    let x = random(&[4, 6], 1);
    let linear = candle_nn::Linear::new(random(&[3, 5], 2), Some(random(&[3], 3)));
    let err = echoai::model::dense(&x, &linear).unwrap_err().to_string();
    assert!(err.contains("do not fit"), "{err}");
    let err = echoai::model::layer_norm(&x, &random(&[5], 4), &random(&[6], 5), 1e-5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("do not fit"), "{err}");
}

#[test]
fn empty_batches_pass_through_and_a_non_finite_row_stays_in_its_row() {
    // No rows: empty outputs, and the weights' gradients are zero, not garbage.
    let linear = candle_nn::Linear::new(random(&[3, 5], 6), Some(random(&[3], 7)));
    let empty = Tensor::zeros((0, 4, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let weights = Tensor::zeros((0, 4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let (out, grads) = gradients(
        &[
            empty,
            linear.weight().clone(),
            linear.bias().unwrap().clone(),
        ],
        &weights,
        |t| {
            let linear = candle_nn::Linear::new(t[1].clone(), Some(t[2].clone()));
            echoai::model::dense(&t[0], &linear).unwrap()
        },
    );
    assert_eq!(out.dims(), &[0, 4, 3]);
    for g in &grads[1..] {
        assert!(common::bits(g).iter().all(|&b| b == 0), "{g}");
    }
    let none = Tensor::zeros((0, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
    let normed = echoai::model::layer_norm(&none, &random(&[6], 8), &random(&[6], 9), 1e-5);
    assert_eq!(normed.unwrap().dims(), &[0, 6]);
    // A NaN or an infinity in one row leaves the other rows of the layer norm as they were.
    let mut rows = random(&[3, 6], 10).to_vec2::<f32>().unwrap();
    let (gain, shift) = (random(&[6], 11), random(&[6], 12));
    let clean = Tensor::new(rows.clone(), &Device::Cpu).unwrap();
    let clean = echoai::model::layer_norm(&clean, &gain, &shift, 1e-5).unwrap();
    rows[1][2] = f32::NAN;
    rows[1][4] = f32::INFINITY;
    let dirty = Tensor::new(rows, &Device::Cpu).unwrap();
    let dirty = echoai::model::layer_norm(&dirty, &gain, &shift, 1e-5).unwrap();
    for r in [0, 2] {
        let (a, b) = (clean.get(r).unwrap(), dirty.get(r).unwrap());
        assert_eq!(common::bits(&a), common::bits(&b), "row {r}");
    }
    let row = dirty.get(1).unwrap().to_vec1::<f32>().unwrap();
    assert!(row.iter().all(|v| !v.is_finite()), "{row:?}");
}
