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

impl ModelConfig {
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
        Ok(())
    }
}
