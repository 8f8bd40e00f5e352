//! The `lstm-attention` model against an independent PyTorch implementation of the local
//! attention block as docs/ARCHITECTURE.md defines it (window, relative-bias indexing, scaling,
//! residual, LayerNorm epsilon): `tests/fixtures/make_attention_parity.py` wrote the fixture.

mod common;

use std::collections::HashMap;

use common::max_rel_err;

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
