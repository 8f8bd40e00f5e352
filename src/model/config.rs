//! The model's shape: which architecture and how large, as stored in a checkpoint's `config.json`.

use serde::{Deserialize, Serialize};

use crate::bounds::check;
use crate::tokenizer::VOCAB_SIZE;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Embedding -> stacked LSTM -> Linear.
    Lstm,
    /// The same LSTM stack, then causal local multi-head self-attention with relative position
    /// bias, residual and LayerNorm.
    #[default]
    LstmAttention,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Lstm => "lstm",
            ModelKind::LstmAttention => "lstm-attention",
        }
    }

    pub fn parse(text: &str) -> Option<ModelKind> {
        match text {
            "lstm" => Some(ModelKind::Lstm),
            "lstm-attention" | "attention" => Some(ModelKind::LstmAttention),
            _ => None,
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub kind: ModelKind,
    pub vocab_size: usize,
    pub embed: usize,
    pub hidden: usize,
    pub layers: usize,
    pub dropout: f64,
    /// Attention window W: position t attends to t-W+1..=t.
    pub window: usize,
    pub heads: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            kind: ModelKind::LstmAttention,
            vocab_size: VOCAB_SIZE,
            embed: 256,
            hidden: 512,
            layers: 2,
            dropout: 0.1,
            window: 64,
            heads: 4,
        }
    }
}

/// Upper bounds on a model's sizes: far above anything that trains on one machine, low enough
/// that a typo or a hand-edited `config.json` cannot ask for terabytes of weights.
pub const MAX_WIDTH: usize = 8192;
pub const MAX_LAYERS: usize = 16;
pub const MAX_DROPOUT: f64 = 0.95;
pub const MAX_WINDOW: usize = 4096;
pub const MAX_HEADS: usize = 64;

/// Weights a model may have: 1 GB as f32, about 200 times the default model. A hand-edited
/// `config.json` asking for more is refused before anything is allocated.
pub const MAX_PARAMETERS: usize = 256 * 1024 * 1024;

impl ModelConfig {
    /// Every weight's name and shape, as `model.safetensors` holds them (PyTorch's names),
    /// computed from the sizes alone: loading checks a file against this without building a
    /// model first.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (v, e, h) = (self.vocab_size, self.embed, self.hidden);
        let mut shapes = vec![("embedding.weight".to_string(), vec![v, e])];
        for l in 0..self.layers {
            let input = if l == 0 { e } else { h };
            shapes.push((format!("lstm.weight_ih_l{l}"), vec![4 * h, input]));
            shapes.push((format!("lstm.weight_hh_l{l}"), vec![4 * h, h]));
            shapes.push((format!("lstm.bias_ih_l{l}"), vec![4 * h]));
            shapes.push((format!("lstm.bias_hh_l{l}"), vec![4 * h]));
        }
        if self.kind == ModelKind::LstmAttention {
            let a = |name: &str, shape: Vec<usize>| (format!("attention.{name}"), shape);
            shapes.extend([
                a("qkv.weight", vec![3 * h, h]),
                a("qkv.bias", vec![3 * h]),
                a("out.weight", vec![h, h]),
                a("out.bias", vec![h]),
                a("rel_bias", vec![self.heads, self.window]),
                a("norm.weight", vec![h]),
                a("norm.bias", vec![h]),
            ]);
        }
        shapes.push(("output.weight".to_string(), vec![v, h]));
        shapes.push(("output.bias".to_string(), vec![v]));
        shapes.sort();
        shapes
    }

    /// How many weights the model has (saturating: a hostile size cannot overflow it).
    pub fn parameter_count(&self) -> usize {
        self.parameter_shapes()
            .iter()
            .map(|(_, shape)| shape.iter().fold(1usize, |n, &d| n.saturating_mul(d)))
            .fold(0usize, usize::saturating_add)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    /// Explains the first thing wrong with the sizes, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.vocab_size != VOCAB_SIZE {
            return Err(format!(
                "vocabulary size {} does not match this build's {VOCAB_SIZE}",
                self.vocab_size
            ));
        }
        check("embed", self.embed, 1..=MAX_WIDTH)?;
        check("hidden", self.hidden, 1..=MAX_WIDTH)?;
        check("layers", self.layers, 1..=MAX_LAYERS)?;
        check("dropout", self.dropout, 0.0..=MAX_DROPOUT)?;
        if self.kind == ModelKind::LstmAttention {
            check("window", self.window, 1..=MAX_WINDOW)?;
            check("heads", self.heads, 1..=MAX_HEADS)?;
            if !self.hidden.is_multiple_of(self.heads) {
                return Err(format!(
                    "hidden size {} is not divisible by {} heads",
                    self.hidden, self.heads
                ));
            }
        }
        let parameters = self.parameter_count();
        if parameters > MAX_PARAMETERS {
            return Err(format!(
                "these sizes make {parameters} weights, more than the {MAX_PARAMETERS} a model may have: use a smaller hidden, embed or layers"
            ));
        }
        Ok(())
    }
}
