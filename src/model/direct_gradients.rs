//! A training step's loss and every weight's gradient. On the CPU in f32 the backward pass runs
//! by hand through the custom ops (fused LSTM layers, the attention block's dense, band and
//! layer-norm ops, the output loss) instead of through candle's autograd.
//!
//! Why: candle's `backward` gives every input of every graph node a zeroed tensor and then adds
//! the node's gradient to it, and the concatenated weights `[W_ih | W_hh]` come back through
//! strided `narrow`s. At the reference size (H512) that is about 50 MB zeroed and added per step,
//! 26-34 ms of a 500 ms step around ops that take 318 ms (docs/BENCHMARKS.md, issue 14, eighth
//! pass). Here each gradient is made once, and the LSTM layers take `W_ih` and `W_hh` as two
//! operands, so the weights are never concatenated nor their gradient split (ninth pass). The
//! operations are candle's own, in its order, so the gradients have the bits of
//! `loss.backward()` (a test compares them).

use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{CustomOp2, CustomOp3, DType, Result, Tensor};

use super::MusicModel;
use super::attention::AttentionParts;
use super::band_attention::BandAttentionOp;
use super::dense::DenseOp;
use super::fused_lstm::{FusedLstmOp, LayerInput};
use super::layer_norm::LayerNormOp;
use super::lstm::{Sequence, cell_dropout_mask};
use super::output_loss::OutputLossOp;
use crate::rng::Rng;

/// A custom op as candle keeps it in a graph, so that its backward pass can be called here.
type SharedOp = Arc<Box<dyn CustomOp3 + Send + Sync>>;

fn shared(op: impl CustomOp3 + Send + Sync + 'static) -> SharedOp {
    Arc::new(Box::new(op))
}

type SharedOp2 = Arc<Box<dyn CustomOp2 + Send + Sync>>;

/// The forward of an op on an input and two weights (`dense`: `W`, `b`; the layer norm: gain,
/// shift), kept for its backward pass.
struct WeightedRun {
    op: SharedOp,
    /// The input, the two weights (contiguous, as the op takes them) and the output.
    tensors: [Tensor; 4],
}

impl WeightedRun {
    fn forward(op: SharedOp, x: &Tensor, weights: [&Tensor; 2]) -> Result<WeightedRun> {
        let [a, b] = weights.map(Tensor::contiguous);
        let (a, b) = (a?, b?);
        let y = x.apply_op3_arc(&a, &b, op.clone())?;
        Ok(WeightedRun {
            op,
            tensors: [x.clone(), a, b, y],
        })
    }

    /// A linear layer on [`DenseOp`], as `dense` runs it.
    fn dense(x: &Tensor, linear: &candle_nn::Linear) -> Result<WeightedRun> {
        let Some(bias) = linear.bias() else {
            candle_core::bail!("dense: a layer without a bias")
        };
        WeightedRun::forward(shared(DenseOp), x, [linear.weight(), bias])
    }

    fn output(&self) -> &Tensor {
        &self.tensors[3]
    }

    /// Puts the two weights' gradients in `grads`; returns the input's.
    fn backward(&self, dy: &Tensor, grads: &mut GradStore) -> Result<Tensor> {
        let [x, a, b, y] = &self.tensors;
        let (dx, da, db) = self.op.bwd(x, a, b, y, dy)?;
        let (Some(dx), Some(da), Some(db)) = (dx, da, db) else {
            candle_core::bail!("{}: a gradient missing", self.op.name())
        };
        grads.insert(a, da);
        grads.insert(b, db);
        Ok(dx)
    }
}

/// The attention block's forward (as `LocalAttention::forward_with` runs it on the CPU), kept for
/// its backward pass.
struct AttentionRun {
    qkv: WeightedRun,
    band: SharedOp2,
    /// The band op's operands and result: `qkv`, `rel_bias`, the context.
    band_tensors: [Tensor; 3],
    out: WeightedRun,
    /// On `h + W_o context + b_o`.
    norm: WeightedRun,
}

impl AttentionRun {
    fn forward(parts: &AttentionParts, h: &Tensor) -> Result<AttentionRun> {
        let h = h.contiguous()?;
        let qkv = WeightedRun::dense(&h, parts.qkv)?;
        let band: SharedOp2 = Arc::new(Box::new(BandAttentionOp::new(parts.heads, true)));
        let qkv_values = qkv.output().contiguous()?;
        let rel_bias = parts.rel_bias.contiguous()?;
        let context = qkv_values.apply_op2_arc(&rel_bias, band.clone())?;
        let out = WeightedRun::dense(&context, parts.out)?;
        let y = (&h + out.output())?;
        let eps = parts.eps as f32;
        let norm = WeightedRun::forward(
            shared(LayerNormOp { eps }),
            &y,
            [parts.norm_weight, parts.norm_bias],
        )?;
        Ok(AttentionRun {
            qkv,
            band,
            band_tensors: [qkv_values, rel_bias, context],
            out,
            norm,
        })
    }

    fn output(&self) -> &Tensor {
        self.norm.output()
    }

    /// Puts the block's weight gradients in `grads`; returns the gradient of its input `h`.
    fn backward(&self, d_normed: &Tensor, grads: &mut GradStore) -> Result<Tensor> {
        let d_y = self.norm.backward(d_normed, grads)?;
        // `y = h + o`: both get `d_y`.
        let d_context = self.out.backward(&d_y, grads)?;
        let [qkv, rel_bias, context] = &self.band_tensors;
        let (d_qkv, d_rel_bias) = self.band.bwd(qkv, rel_bias, context, &d_context)?;
        let (Some(d_qkv), Some(d_rel_bias)) = (d_qkv, d_rel_bias) else {
            candle_core::bail!("band attention: a gradient missing")
        };
        grads.insert(rel_bias, d_rel_bias);
        let d_h = self.qkv.backward(&d_qkv, grads)?;
        // In candle's order: the residual's share first, then the projection's.
        &d_y + &d_h
    }
}

/// One fused layer's forward, kept for its backward pass.
struct LayerRun {
    op: FusedLstmOp,
    input: Tensor,
    /// The op's input weights: `W_ih`, or layer 0's `W_ih E^T` per id.
    input_part: Tensor,
    extra: Tensor,
    out: Tensor,
    /// The dropout mask the input was multiplied by (layers above the first, training).
    mask: Option<Tensor>,
    /// The layer's `(W_ih, W_hh, b_ih, b_hh)`, the variables the gradients are for.
    weights: [Tensor; 4],
}

/// Everything the hand-run backward pass reads.
struct DirectBackward {
    runs: Vec<LayerRun>,
    attention: Option<AttentionRun>,
    loss_op: SharedOp,
    /// The output-loss op's operands: the top layer's output, `[W | b]`, the targets.
    operands: [Tensor; 3],
    output_weight: Tensor,
    output_bias: Option<Tensor>,
    embedding: Tensor,
    hidden: usize,
}

/// A training step's objective, its backward pass still to run: callers read the loss first
/// (and refuse a non-finite one) before paying for the gradients.
pub struct TrainingLoss {
    loss: Tensor,
    direct: Option<Box<DirectBackward>>,
}

impl TrainingLoss {
    /// A loss whose gradients come from candle's autograd.
    pub fn from_graph(loss: Tensor) -> Self {
        TrainingLoss { loss, direct: None }
    }

    pub fn loss(&self) -> &Tensor {
        &self.loss
    }

    /// The gradient of every weight the loss depends on.
    pub fn gradients(self) -> Result<GradStore> {
        match self.direct {
            Some(direct) => direct.gradients(&self.loss),
            None => self.loss.backward(),
        }
    }
}

impl MusicModel {
    /// The training objective, as [`MusicModel::loss`], ready for [`TrainingLoss::gradients`]:
    /// on the CPU in f32 with a backward pass of its own, elsewhere candle's.
    pub fn training_loss(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        dropout_rng: Option<&mut Rng>,
    ) -> Result<TrainingLoss> {
        let (b, t) = ids.dims2()?;
        let direct =
            self.device.is_cpu() && self.embedding.embeddings().dtype() == DType::F32 && b * t > 0;
        if !direct {
            return Ok(TrainingLoss::from_graph(self.loss(
                ids,
                targets,
                dropout_rng,
            )?));
        }
        self.direct_training_loss(ids, targets, dropout_rng)
    }

    /// The forward pass of [`MusicModel::loss`] on the fused ops, keeping each op for its
    /// backward pass: the same operations in the same order, so the same bits.
    fn direct_training_loss(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        mut dropout_rng: Option<&mut Rng>,
    ) -> Result<TrainingLoss> {
        let (b, _) = ids.dims2()?;
        let state = self.zero_state(b)?;
        let embedding = self.embedding.embeddings();
        let mut runs: Vec<LayerRun> = Vec::with_capacity(self.lstm.num_layers());
        for (l, layer) in self.lstm.layers().iter().enumerate() {
            let (w_ih, w_hh, b_ih, b_hh) = layer.weights();
            let (input, input_part, mask, kind) = match runs.last() {
                None => (
                    ids.to_dtype(DType::U32)?.contiguous()?,
                    layer.per_id_projection(embedding)?,
                    None,
                    LayerInput::Ids,
                ),
                Some(below) => {
                    let mask = match dropout_rng.as_deref_mut() {
                        Some(rng) if self.config.dropout > 0.0 => {
                            Some(cell_dropout_mask(&below.out, self.config.dropout, rng)?)
                        }
                        _ => None,
                    };
                    let input = match &mask {
                        Some(mask) => (&below.out * mask)?,
                        None => below.out.clone(),
                    };
                    (input, w_ih.clone(), mask, LayerInput::Stacked)
                }
            };
            let extra = layer.fused_extra(&state.lstm.h[l], &state.lstm.c[l])?;
            let op = FusedLstmOp::new(true, kind);
            // The weights as two operands: no `[W_ih | W_hh]` copy, nor a split of its gradient.
            let out = op.forward_parts(&input, &input_part, w_hh, &extra)?;
            runs.push(LayerRun {
                op,
                input,
                input_part,
                extra,
                out,
                mask,
                weights: [w_ih, w_hh, b_ih, b_hh].map(Tensor::clone),
            });
        }
        let Some(lstm_top) = runs.last() else {
            candle_core::bail!("loss: a model without layers")
        };
        let attention = match &self.attention {
            Some(attention) => Some(AttentionRun::forward(&attention.parts(), &lstm_top.out)?),
            None => None,
        };
        let top = Sequence::WithCell(match &attention {
            Some(attention) => attention.output().clone(),
            None => lstm_top.out.clone(),
        });
        let (h, wb, targets) = self.output_loss_operands(&top, targets)?;
        let loss_op = shared(OutputLossOp::new(true));
        let loss = h.apply_op3_arc(&wb, &targets, loss_op.clone())?;
        let direct = DirectBackward {
            runs,
            attention,
            loss_op,
            operands: [h, wb, targets],
            output_weight: self.output.weight().clone(),
            output_bias: self.output.bias().cloned(),
            embedding: embedding.clone(),
            hidden: self.config.hidden,
        };
        Ok(TrainingLoss {
            loss,
            direct: Some(Box::new(direct)),
        })
    }
}

impl DirectBackward {
    /// Top down, each gradient made once, by candle's operations in its order. Each `Option` a
    /// backward pass returns is `Some` for the inputs that need a gradient; a `None` here would
    /// be a bug in an op, reported, not a panic.
    fn gradients(&self, loss: &Tensor) -> Result<GradStore> {
        let missing = |what: &str| candle_core::Error::Msg(format!("no gradient for {what}"));
        let hidden = self.hidden;
        let mut grads = GradStore::default();
        let [h, wb, targets] = &self.operands;
        let (d_h, d_wb, _) = self.loss_op.bwd(h, wb, targets, loss, &loss.ones_like()?)?;
        let d_wb = d_wb.ok_or_else(|| missing("the output layer"))?;
        grads.insert(
            &self.output_weight,
            d_wb.narrow(1, 0, hidden)?.contiguous()?,
        );
        if let Some(bias) = &self.output_bias {
            grads.insert(bias, d_wb.narrow(1, hidden, 1)?.squeeze(1)?.contiguous()?);
        }
        let mut d_out = d_h.ok_or_else(|| missing("the top layer"))?;
        if let Some(attention) = &self.attention {
            d_out = attention.backward(&d_out, &mut grads)?;
        }
        for run in self.runs.iter().rev() {
            let [w_ih, w_hh, b_ih, b_hh] = &run.weights;
            let g = run
                .op
                .backward_parts(&run.input, &run.input_part, w_hh, &run.extra, &d_out)?;
            let (d_input, d_input_part, d_extra) = (g.dx, g.dw_ih, g.dextra);
            grads.insert(w_hh, g.dw_hh);
            // `b_ih + b_hh`: each bias gets the sum's gradient.
            let d_bias = d_extra.narrow(0, 0, 4 * hidden)?.contiguous()?;
            grads.insert(b_ih, d_bias.clone());
            grads.insert(b_hh, d_bias);
            match run.op.input_kind() {
                // Layers above the first: `W_ih` itself, and the gradient of the input goes on
                // down through the dropout mask.
                LayerInput::Stacked | LayerInput::Dense => {
                    grads.insert(w_ih, d_input_part);
                    let d_input = d_input.ok_or_else(|| missing("an LSTM layer's input"))?;
                    d_out = match &run.mask {
                        Some(mask) => (d_input * mask)?,
                        None => d_input,
                    };
                }
                // Layer 0: `W_ih E^T` per id, passed back as candle's matmul and transpose do
                // (`(E^T)^T` is `E`'s own layout).
                LayerInput::Ids => {
                    let d_w_ih = d_input_part.matmul(&self.embedding)?;
                    let d_embedding = w_ih.t()?.matmul(&d_input_part)?.t()?.contiguous()?;
                    grads.insert(w_ih, d_w_ih);
                    grads.insert(&self.embedding, d_embedding);
                }
            }
        }
        Ok(grads)
    }
}
