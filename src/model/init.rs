//! Seeded initial weights, so one seed gives one starting point (candle's CPU generator cannot be
//! seeded). The distributions are PyTorch's defaults, which candle also uses: `N(0, 1)` for the
//! embedding, `U(-1/sqrt(H), 1/sqrt(H))` for every LSTM tensor, Kaiming-uniform weights and
//! `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` biases for linear layers, ones and zeros for LayerNorm,
//! and zero relative-position bias.

use candle_core::{Result, Tensor};
use candle_nn::VarMap;

use super::ModelConfig;
use crate::rng::Rng;

pub fn initialize(varmap: &VarMap, config: &ModelConfig, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned variable map".into()))?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let dims = var.dims().to_vec();
        let n = var.elem_count();
        let mut uniform = |bound: f64| -> Vec<f32> {
            (0..n)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect()
        };
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with("norm.bias") || name.ends_with("rel_bias") {
            vec![0.0; n]
        } else if name.starts_with("embedding") {
            (0..n)
                .map(|_| {
                    let u1 = rng.next_f64().max(1e-300);
                    let u2 = rng.next_f64();
                    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
                })
                .collect()
        } else if name.starts_with("lstm") {
            uniform(1.0 / (config.hidden as f64).sqrt())
        } else if name.ends_with("weight") {
            let fan_in = *dims.last().unwrap_or(&1) as f64;
            uniform((6.0 / fan_in).sqrt())
        } else {
            // A linear layer's bias: its fan-in is the hidden size for every linear layer here.
            uniform(1.0 / (config.hidden as f64).sqrt())
        };
        var.set(&Tensor::from_vec(values, dims.as_slice(), var.device())?)?;
    }
    Ok(())
}
