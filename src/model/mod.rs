//! The two sequence models (candle): `lstm` and `lstm-attention`, over the 390-event vocabulary.
//!
//! Both map ids `[B, T]` to logits `[B, T, 390]` and have a streaming [`MusicModel::step`] that
//! carries a [`State`], so generating N events costs O(N).

mod attention;
mod band_attention;
pub mod checkpoint;
mod config;
mod cpu_values;
#[cfg(feature = "cuda")]
mod cuda_adamw;
#[cfg(feature = "cuda")]
pub(crate) use cuda_adamw::{AdamWScalars, NonFiniteFlag, adamw_update};
#[cfg(feature = "cuda")]
mod cuda_band_attention;
#[cfg(feature = "cuda")]
mod cuda_lstm;
#[cfg(feature = "cuda")]
mod cuda_output_loss;
#[cfg(feature = "cuda")]
mod cuda_util;
mod dense;
mod direct_gradients;
pub(crate) use cpu_values::{storage_address, with_values, with_values_mut};
mod fused_lstm;
mod gates;
pub mod init;
pub mod isa;
pub mod kernels;
mod layer_norm;
mod lstm;
mod matmul;
mod output_loss;
mod scratch;
mod stepper;
mod team;
pub mod team_waits;
mod tiling;
mod transpose;

pub use attention::{AttentionCache, LocalAttention};
pub use config::{ModelConfig, ModelKind};
pub use dense::dense;
pub use direct_gradients::TrainingLoss;
pub use fused_lstm::{FusedLstmOp, LayerInput, TeamSplit};
pub use layer_norm::layer_norm;
pub use lstm::{LstmLayer, LstmStack, LstmState, Recurrence, Sequence, dropout};
pub use stepper::{Stepper, WeightPrecision};

use candle_core::{DType, Device, Result, Tensor, bail};
use candle_nn::{Embedding, Linear, Module, VarBuilder};

use crate::rng::Rng;

/// Embedding -> LSTM stack -> [local attention] -> Linear. Weight names: `embedding.weight`,
/// `lstm.weight_ih_l0` ... (PyTorch's), `attention.*`, `output.weight`, `output.bias`.
pub struct MusicModel {
    pub config: ModelConfig,
    embedding: Embedding,
    lstm: LstmStack,
    attention: Option<LocalAttention>,
    output: Linear,
    device: Device,
}

/// Everything a streaming generation carries from one step to the next.
#[derive(Clone, Debug)]
pub struct State {
    pub lstm: LstmState,
    pub attention: AttentionCache,
}

impl State {
    pub fn detach(&self) -> Self {
        State {
            lstm: self.lstm.detach(),
            attention: self.attention.detach(),
        }
    }
}

impl MusicModel {
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let embedding = candle_nn::embedding(config.vocab_size, config.embed, vb.pp("embedding"))?;
        let lstm = LstmStack::new(
            config.embed,
            config.hidden,
            config.layers,
            config.dropout,
            &vb.pp("lstm"),
        )?;
        let attention = match config.kind {
            ModelKind::Lstm => None,
            ModelKind::LstmAttention => Some(LocalAttention::new(
                config.hidden,
                config.heads,
                config.window,
                &vb.pp("attention"),
            )?),
        };
        let output = candle_nn::linear(config.hidden, config.vocab_size, vb.pp("output"))?;
        Ok(MusicModel {
            config: config.clone(),
            embedding,
            lstm,
            attention,
            output,
            device: vb.device().clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn zero_state(&self, batch: usize) -> Result<State> {
        Ok(State {
            lstm: LstmState::zeros(
                self.lstm.num_layers(),
                batch,
                self.config.hidden,
                &self.device,
            )?,
            attention: AttentionCache::default(),
        })
    }

    /// Logits `[B, T, V]` for ids `[B, T]` (u32) from the zero state. With `dropout_rng` the
    /// model is in training mode (dropout on).
    pub fn forward(&self, ids: &Tensor, dropout_rng: Option<&mut Rng>) -> Result<Tensor> {
        self.forward_with(ids, dropout_rng, Recurrence::Auto)
    }

    /// As [`MusicModel::forward`], choosing how the LSTM recurrence is computed.
    pub fn forward_with(
        &self,
        ids: &Tensor,
        dropout_rng: Option<&mut Rng>,
        recurrence: Recurrence,
    ) -> Result<Tensor> {
        self.output
            .forward(&self.top_states(ids, dropout_rng, recurrence)?)
    }

    /// The last hidden layer `[B, T, H]` (after attention) for ids `[B, T]` from the zero state.
    fn top_states(
        &self,
        ids: &Tensor,
        dropout_rng: Option<&mut Rng>,
        recurrence: Recurrence,
    ) -> Result<Tensor> {
        self.top_sequence(ids, dropout_rng, recurrence)?.states()
    }

    /// As [`MusicModel::top_states`], in the form the layers made it.
    fn top_sequence(
        &self,
        ids: &Tensor,
        dropout_rng: Option<&mut Rng>,
        recurrence: Recurrence,
    ) -> Result<Sequence> {
        let (b, _) = ids.dims2()?;
        let state = self.zero_state(b)?;
        let (h, _) = self.lstm.forward_ids_sequence(
            ids,
            self.embedding.embeddings(),
            &state.lstm,
            recurrence,
            dropout_rng,
        )?;
        let Some(attention) = &self.attention else {
            return Ok(h);
        };
        let banded = recurrence == Recurrence::Auto;
        match h {
            // The cell-state row rides through the block as one more position, after every real
            // one: no real position attends to it (the band is causal) and the loss reads no
            // target there, so its gradient is zero, as the narrowed view's was. That saves the
            // copy to `[B, T, H]` and two gradient nodes (a zeroed tensor and an add each, at the
            // bundled size 4 MB per node).
            Sequence::WithCell(out) => {
                Ok(Sequence::WithCell(attention.forward_with(&out, banded)?))
            }
            Sequence::States(h) => Ok(Sequence::States(attention.forward_with(&h, banded)?)),
        }
    }

    /// The mean cross-entropy (nats per event) of predicting `targets [B * T]` (u32) from
    /// `ids [B, T]`: the training objective. With `dropout_rng` the model is in training mode.
    pub fn loss(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        dropout_rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        self.loss_with(ids, targets, dropout_rng, Recurrence::Auto)
    }

    /// As [`MusicModel::loss`]; `Recurrence::Auto` in f32 on the CPU or CUDA also fuses the
    /// output layer with the loss ([`output_loss::OutputLossOp`]), `Composed` uses candle's ops throughout.
    pub fn loss_with(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        dropout_rng: Option<&mut Rng>,
        recurrence: Recurrence,
    ) -> Result<Tensor> {
        let top = self.top_sequence(ids, dropout_rng, recurrence)?;
        let (b, t, hidden) = top.dims()?;
        let device = self.device();
        let weight = self.output.weight();
        let fused = recurrence == Recurrence::Auto
            && (device.is_cpu() || cfg!(feature = "cuda") && device.is_cuda())
            && weight.dtype() == DType::F32
            && b * t > 0;
        if !fused {
            let logits = self
                .output
                .forward(&top.states()?.reshape((b * t, hidden))?)?;
            return candle_nn::loss::cross_entropy(&logits, targets);
        }
        let (h, wb, targets) = self.output_loss_operands(&top, targets)?;
        let keep = h.track_op() || wb.track_op();
        h.apply_op3(&wb, &targets, output_loss::OutputLossOp::new(keep))
    }

    /// The fused output-loss op's operands for the top layer's output and `targets [B * T]`:
    /// `h` (contiguous), `[W | b]` and the targets (u32, an `IGNORED` one per cell-state row).
    fn output_loss_operands(
        &self,
        top: &Sequence,
        targets: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = top.dims()?;
        let device = self.device();
        let weight = self.output.weight();
        let bias = match self.output.bias() {
            Some(bias) => bias.clone(),
            None => Tensor::zeros(weight.dim(0)?, DType::F32, device)?,
        };
        let wb = Tensor::cat(&[weight, &bias.unsqueeze(1)?], 1)?;
        let targets = targets.to_dtype(DType::U32)?;
        if device.is_cpu() && b * t > 0 {
            // The op skips `IGNORED` rows; a caller's target never is one (the op names any
            // other id outside the vocabulary itself).
            let largest = targets.flatten_all()?.max(0)?.to_scalar::<u32>()?;
            if largest == output_loss::IGNORED {
                bail!(
                    "loss: target {largest} is outside the vocabulary of {}",
                    weight.dim(0)?
                )
            }
        }
        let (h, targets) = match top {
            // Each sequence's cell-state row is read in place, with a target that counts for
            // nothing.
            Sequence::WithCell(out) => {
                let ignored = Tensor::full(output_loss::IGNORED, (b, 1), device)?;
                let targets = Tensor::cat(&[&targets.reshape((b, t))?, &ignored], 1)?;
                (out.clone(), targets.flatten_all()?)
            }
            // `[B, T, H]` as it is: the op reads rows over every leading dimension.
            Sequence::States(h) => (h.clone(), targets),
        };
        Ok((h.contiguous()?, wb, targets.contiguous()?))
    }

    /// Feeds one id per sequence (`[B]`, u32) and returns logits `[B, V]` for the next event.
    pub fn step(&self, ids: &Tensor, state: &mut State) -> Result<Tensor> {
        let x = self.embedding.forward(ids)?;
        let h = self.lstm.step(&x, &mut state.lstm)?;
        let h = match &self.attention {
            Some(attention) => attention.step(&h, &mut state.attention)?,
            None => h,
        };
        self.output.forward(&h)
    }
}
