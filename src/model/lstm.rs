//! A stack of LSTM layers (Hochreiter & Schmidhuber, 1997) with PyTorch's `nn.LSTM` weight names
//! and gate order (i, f, g, o), so PyTorch weights load directly.
//!
//! Per layer: `gates = x W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh`, `i, f, o = sigmoid(.)`,
//! `g = tanh(.)`, `c_t = f * c_{t-1} + i * g`, `h_t = o * tanh(c_t)`. The input projection of a
//! whole sequence is one matmul; only `h W_hh^T` runs per step. On the CPU in f32 each layer runs
//! as one [`FusedLstmOp`] (the first one on event ids, see [`LstmLayer::forward_ids`]); elsewhere
//! (and as the test reference) as composed candle ops.

use candle_core::{D, DType, Device, IndexOp, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::fused_lstm::{FusedLstmOp, LayerInput};
use crate::rng::Rng;

/// How the recurrence of a sequence is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recurrence {
    /// The fused custom op ([`FusedLstmOp`]) on CPU f32, composed ops elsewhere.
    Auto,
    /// Composed candle ops, step by step (the reference).
    Composed,
}

/// A layer's output sequence.
#[derive(Clone, Debug)]
pub enum Sequence {
    /// `h_1 .. h_T`, `[B, T, H]`.
    States(Tensor),
    /// The fused op's whole output on the CPU, `[B, T + 1, H]`: `h_1 .. h_T`, then `c_T`. The
    /// layer above ([`LayerInput::Stacked`]), the attention block and the fused loss read it as
    /// it is; after the attention block the last row is what the block made of `c_T`, which no
    /// target reads.
    WithCell(Tensor),
}

impl Sequence {
    /// `h_1 .. h_T`, `[B, T, H]`.
    pub fn states(&self) -> Result<Tensor> {
        match self {
            Sequence::States(h) => Ok(h.clone()),
            Sequence::WithCell(out) => out.narrow(1, 0, out.dim(1)?.saturating_sub(1)),
        }
    }

    /// `(B, T, H)`.
    pub fn dims(&self) -> Result<(usize, usize, usize)> {
        match self {
            Sequence::States(h) => h.dims3(),
            Sequence::WithCell(out) => {
                let (b, rows, hidden) = out.dims3()?;
                Ok((b, rows.saturating_sub(1), hidden))
            }
        }
    }
}

pub struct LstmLayer {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    hidden: usize,
}

/// Per-layer `(h, c)`, each `[B, H]`.
#[derive(Clone, Debug)]
pub struct LstmState {
    pub h: Vec<Tensor>,
    pub c: Vec<Tensor>,
}

impl LstmState {
    pub fn zeros(layers: usize, batch: usize, hidden: usize, device: &Device) -> Result<Self> {
        let z = Tensor::zeros((batch, hidden), DType::F32, device)?;
        Ok(LstmState {
            h: vec![z.clone(); layers],
            c: vec![z; layers],
        })
    }

    /// Cuts the autograd history so a long generation does not keep every step alive.
    pub fn detach(&self) -> Self {
        LstmState {
            h: self.h.iter().map(Tensor::detach).collect(),
            c: self.c.iter().map(Tensor::detach).collect(),
        }
    }
}

impl LstmLayer {
    pub fn new(input: usize, hidden: usize, layer: usize, vb: &VarBuilder) -> Result<Self> {
        // PyTorch's initialisation: U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias.
        let k = 1.0 / (hidden as f64).sqrt();
        let init = Init::Uniform { lo: -k, up: k };
        let w_ih = vb.get_with_hints((4 * hidden, input), &format!("weight_ih_l{layer}"), init)?;
        let w_hh = vb.get_with_hints((4 * hidden, hidden), &format!("weight_hh_l{layer}"), init)?;
        let b_ih = vb.get_with_hints(4 * hidden, &format!("bias_ih_l{layer}"), init)?;
        let b_hh = vb.get_with_hints(4 * hidden, &format!("bias_hh_l{layer}"), init)?;
        Ok(LstmLayer {
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            hidden,
        })
    }

    /// `x [B, T, In]` -> (`h_1..h_T [B, T, H]`, `h_T`, `c_T`).
    pub fn forward(
        &self,
        x: &Tensor,
        h0: &Tensor,
        c0: &Tensor,
        recurrence: Recurrence,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (out, h, c) =
            self.forward_sequence(&Sequence::States(x.clone()), h0, c0, recurrence)?;
        Ok((out.states()?, h, c))
    }

    /// As [`LstmLayer::forward`] on either form of the layer below's output.
    fn forward_sequence(
        &self,
        x: &Sequence,
        h0: &Tensor,
        c0: &Tensor,
        recurrence: Recurrence,
    ) -> Result<(Sequence, Tensor, Tensor)> {
        let (b, t, input) = x.dims()?;
        let (device, dtype) = match x {
            Sequence::States(x) | Sequence::WithCell(x) => (x.device(), x.dtype()),
        };
        // CUDA runs the op's `cuda_fwd` (feature `cuda`, `cuda_lstm.rs`); Metal stays composed.
        let fused = recurrence == Recurrence::Auto
            && (device.is_cpu() || device.is_cuda())
            && dtype == DType::F32
            && t > 0
            && b > 0;
        if fused {
            return match x {
                Sequence::States(x) => self.fused(x, &self.w_ih, h0, c0, LayerInput::Dense),
                Sequence::WithCell(x) => self.fused(x, &self.w_ih, h0, c0, LayerInput::Stacked),
            };
        }
        let x = x.states()?;
        let xproj = x
            .reshape((b * t, input))?
            .matmul(&self.w_ih.t()?)?
            .broadcast_add(&self.bias()?)?
            .reshape((b, t, 4 * self.hidden))?;
        let w_hh_t = self.w_hh.t()?;
        let (mut h, mut c) = (h0.clone(), c0.clone());
        let mut outputs = Vec::with_capacity(t);
        for step in 0..t {
            let gates = (xproj.i((.., step))? + h.matmul(&w_hh_t)?)?;
            (h, c) = self.cell(&gates, &c)?;
            outputs.push(h.clone());
        }
        Ok((Sequence::States(Tensor::stack(&outputs, 1)?), h, c))
    }

    /// The fused op ([`FusedLstmOp`]) on `input` (vectors or ids) with `input_part` (`W_ih`, or
    /// per id `W_ih E^T`).
    fn fused(
        &self,
        input: &Tensor,
        input_part: &Tensor,
        h0: &Tensor,
        c0: &Tensor,
        kind: LayerInput,
    ) -> Result<(Sequence, Tensor, Tensor)> {
        let t = match kind {
            LayerInput::Stacked => input.dims()[1] - 1,
            LayerInput::Dense | LayerInput::Ids => input.dims()[1],
        };
        let w = Tensor::cat(&[input_part, &self.w_hh], 1)?;
        let extra = self.fused_extra(h0, c0)?;
        let input = input.contiguous()?;
        // Activations are kept only when autograd will ask for the backward pass.
        let needs_grad = input.track_op() || w.track_op() || extra.track_op();
        let out = input.apply_op3(&w, &extra, FusedLstmOp::new(needs_grad, kind))?;
        let h_n = out.i((.., t - 1))?;
        let c_n = out.i((.., t))?;
        // Only the CPU op takes a stacked input.
        let hs = if out.device().is_cpu() {
            Sequence::WithCell(out)
        } else {
            Sequence::States(out.narrow(1, 0, t)?)
        };
        Ok((hs, h_n, c_n))
    }

    /// As [`LstmLayer::forward`] for `embedding[ids]` (`ids [B, T]` u32, `embedding [V, In]`).
    /// The fused path never builds the embedded vectors: it hands the op the input projection of
    /// every vocabulary entry, `W_ih embedding^T [4H, V]`, and the ids.
    pub fn forward_ids(
        &self,
        ids: &Tensor,
        embedding: &Tensor,
        h0: &Tensor,
        c0: &Tensor,
        recurrence: Recurrence,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (out, h, c) = self.forward_ids_sequence(ids, embedding, h0, c0, recurrence)?;
        Ok((out.states()?, h, c))
    }

    fn forward_ids_sequence(
        &self,
        ids: &Tensor,
        embedding: &Tensor,
        h0: &Tensor,
        c0: &Tensor,
        recurrence: Recurrence,
    ) -> Result<(Sequence, Tensor, Tensor)> {
        let (b, t) = ids.dims2()?;
        let fused = recurrence == Recurrence::Auto
            && ids.device().is_cpu()
            && embedding.dtype() == DType::F32
            && t > 0
            && b > 0;
        if fused {
            let per_id = self.per_id_projection(embedding)?;
            return self.fused(&ids.to_dtype(DType::U32)?, &per_id, h0, c0, LayerInput::Ids);
        }
        let x = embed(ids, embedding)?.reshape((b, t, embedding.dim(1)?))?;
        self.forward_sequence(&Sequence::States(x), h0, c0, recurrence)
    }

    /// The fused op's `extra` operand, `[b_ih + b_hh | h0 | c0]`.
    pub(super) fn fused_extra(&self, h0: &Tensor, c0: &Tensor) -> Result<Tensor> {
        Tensor::cat(&[&self.bias()?, &h0.flatten_all()?, &c0.flatten_all()?], 0)
    }

    /// The input projection of every vocabulary entry, `W_ih embedding^T [4H, V]`.
    pub(super) fn per_id_projection(&self, embedding: &Tensor) -> Result<Tensor> {
        self.w_ih.matmul(&embedding.t()?)
    }

    /// One step: `x [B, In]` with state `(h, c)` -> new `(h, c)`.
    pub fn step(&self, x: &Tensor, h: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
        let gates = x
            .matmul(&self.w_ih.t()?)?
            .broadcast_add(&self.bias()?)?
            .add(&h.matmul(&self.w_hh.t()?)?)?;
        self.cell(&gates, c)
    }

    /// `(W_ih, W_hh, b_ih, b_hh)`.
    pub fn weights(&self) -> (&Tensor, &Tensor, &Tensor, &Tensor) {
        (&self.w_ih, &self.w_hh, &self.b_ih, &self.b_hh)
    }

    /// Summed per call, never cached: the optimizer updates the two biases in place.
    fn bias(&self) -> Result<Tensor> {
        &self.b_ih + &self.b_hh
    }

    fn cell(&self, gates: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
        let chunks = gates.chunk(4, D::Minus1)?;
        let i = candle_nn::ops::sigmoid(&chunks[0])?;
        let f = candle_nn::ops::sigmoid(&chunks[1])?;
        let g = chunks[2].tanh()?;
        let o = candle_nn::ops::sigmoid(&chunks[3])?;
        let c = ((f * c)? + (i * g)?)?;
        let h = (o * c.tanh()?)?;
        Ok((h, c))
    }
}

pub struct LstmStack {
    layers: Vec<LstmLayer>,
    pub hidden: usize,
    dropout: f64,
}

impl LstmStack {
    /// Weights under `vb` as `weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, ...
    pub fn new(
        input: usize,
        hidden: usize,
        layers: usize,
        dropout: f64,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let layers = (0..layers)
            .map(|l| LstmLayer::new(if l == 0 { input } else { hidden }, hidden, l, vb))
            .collect::<Result<_>>()?;
        Ok(LstmStack {
            layers,
            hidden,
            dropout,
        })
    }

    pub fn layers(&self) -> &[LstmLayer] {
        &self.layers
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// `x [B, T, In]` -> `[B, T, H]` and the final state. With `dropout_rng`, dropout is applied
    /// between layers (training).
    pub fn forward(
        &self,
        x: &Tensor,
        state: &LstmState,
        recurrence: Recurrence,
        dropout_rng: Option<&mut Rng>,
    ) -> Result<(Tensor, LstmState)> {
        let (out, h, c) = self.layers[0].forward_sequence(
            &Sequence::States(x.clone()),
            &state.h[0],
            &state.c[0],
            recurrence,
        )?;
        let (out, state) = self.upper_layers(out, (h, c), state, recurrence, dropout_rng)?;
        Ok((out.states()?, state))
    }

    /// As [`LstmStack::forward`] on `embedding[ids]`; see [`LstmLayer::forward_ids`].
    pub fn forward_ids(
        &self,
        ids: &Tensor,
        embedding: &Tensor,
        state: &LstmState,
        recurrence: Recurrence,
        dropout_rng: Option<&mut Rng>,
    ) -> Result<(Tensor, LstmState)> {
        let (out, state) =
            self.forward_ids_sequence(ids, embedding, state, recurrence, dropout_rng)?;
        Ok((out.states()?, state))
    }

    /// As [`LstmStack::forward_ids`], the top layer's output in either form.
    pub fn forward_ids_sequence(
        &self,
        ids: &Tensor,
        embedding: &Tensor,
        state: &LstmState,
        recurrence: Recurrence,
        dropout_rng: Option<&mut Rng>,
    ) -> Result<(Sequence, LstmState)> {
        let (out, h, c) = self.layers[0].forward_ids_sequence(
            ids,
            embedding,
            &state.h[0],
            &state.c[0],
            recurrence,
        )?;
        self.upper_layers(out, (h, c), state, recurrence, dropout_rng)
    }

    /// Layers 1.. on layer 0's output `x` and final state `first`.
    fn upper_layers(
        &self,
        mut x: Sequence,
        first: (Tensor, Tensor),
        state: &LstmState,
        recurrence: Recurrence,
        mut dropout_rng: Option<&mut Rng>,
    ) -> Result<(Sequence, LstmState)> {
        let mut next = LstmState {
            h: vec![first.0],
            c: vec![first.1],
        };
        for (l, layer) in self.layers.iter().enumerate().skip(1) {
            if let Some(rng) = dropout_rng.as_deref_mut() {
                x = dropout_sequence(&x, self.dropout, rng)?;
            }
            let (out, h, c) = layer.forward_sequence(&x, &state.h[l], &state.c[l], recurrence)?;
            next.h.push(h);
            next.c.push(c);
            x = out;
        }
        Ok((x, next))
    }

    /// One step for `x [B, In]`; updates `state` in place and returns the top layer's `h [B, H]`.
    pub fn step(&self, x: &Tensor, state: &mut LstmState) -> Result<Tensor> {
        let mut x = x.clone();
        for (l, layer) in self.layers.iter().enumerate() {
            let (h, c) = layer.step(&x, &state.h[l], &state.c[l])?;
            state.h[l] = h.clone();
            state.c[l] = c;
            x = h;
        }
        Ok(x)
    }
}

/// `embedding[ids]` as `[ids, In]` rows. Off the CPU as a one-hot product: candle's CUDA
/// `index_add` (the backward of `index_select`) gives each output column one thread that walks
/// every id in turn, which took ~50 ms of a 128 x 512 step on an H200 (issue 13); a product's
/// backward is a GEMM.
pub fn embed(ids: &Tensor, embedding: &Tensor) -> Result<Tensor> {
    let ids = ids.flatten_all()?;
    if ids.device().is_cpu() {
        return embedding.index_select(&ids, 0);
    }
    embed_by_product(&ids, embedding)
}

/// `embedding[ids]` for flat `ids` as a one-hot product, on any device.
fn embed_by_product(ids: &Tensor, embedding: &Tensor) -> Result<Tensor> {
    let vocab = embedding.dim(0)? as u32;
    let classes = Tensor::arange(0u32, vocab, ids.device())?;
    let one_hot = ids
        .to_dtype(DType::U32)?
        .unsqueeze(1)?
        .broadcast_eq(&classes.unsqueeze(0)?)?
        .to_dtype(embedding.dtype())?;
    one_hot.matmul(embedding)
}

/// [`dropout`] on the states of a sequence. A [`Sequence::WithCell`] draws the mask of its
/// `h_1 .. h_T` in the same order as [`Sequence::States`] would (the cell-state row gets a zero,
/// and no draw), so both forms train alike from the same seed.
fn dropout_sequence(x: &Sequence, p: f64, rng: &mut Rng) -> Result<Sequence> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    match x {
        Sequence::WithCell(out) if out.device().is_cpu() => {
            Ok(Sequence::WithCell((out * cell_dropout_mask(out, p, rng)?)?))
        }
        Sequence::WithCell(_) => Ok(Sequence::States(dropout(&x.states()?, p, rng)?)),
        Sequence::States(h) => Ok(Sequence::States(dropout(h, p, rng)?)),
    }
}

/// Inverted dropout with a mask drawn from our own RNG, so a resumed run draws the same masks.
pub fn dropout(x: &Tensor, p: f64, rng: &mut Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    if !x.device().is_cpu() {
        // Drawn on the device (a host mask is megabytes per step to make and upload), from a
        // seed of our RNG, so a resumed run still draws the same masks on the same device.
        x.device().set_seed(rng.next_u64())?;
        let uniform = Tensor::rand(0f32, 1f32, x.shape(), x.device())?;
        let mask = (uniform.lt(keep as f32)?.to_dtype(x.dtype())? * f64::from(scale))?;
        return x * mask;
    }
    let count = x.elem_count();
    x * host_mask(x, p, rng, (count, count))?
}

/// The mask [`dropout_sequence`] multiplies a [`Sequence::WithCell`] CPU output `[B, T + 1, H]`
/// by: a draw for each of `h_1 .. h_T`, none for the cell-state row. The hand-run backward pass
/// ([`super::direct_gradients`]) keeps it.
pub(super) fn cell_dropout_mask(out: &Tensor, p: f64, rng: &mut Rng) -> Result<Tensor> {
    let (_, rows, hidden) = out.dims3()?;
    host_mask(
        out,
        p,
        rng,
        (rows * hidden, rows.saturating_sub(1) * hidden),
    )
}

/// An inverted-dropout mask shaped as `x`, drawn on the host: `x` is read as blocks of `block`
/// values, and the first `drawn` of each get a draw from `rng`, in order (kept: `1 / (1 - p)`,
/// dropped: 0); the rest of each block gets 0 and no draw.
fn host_mask(x: &Tensor, p: f64, rng: &mut Rng, (block, drawn): (usize, usize)) -> Result<Tensor> {
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    let count = x.elem_count();
    let mut mask = Vec::with_capacity(count);
    while mask.len() < count {
        let end = (mask.len() + block.max(1)).min(count);
        let draws = drawn.min(end - mask.len());
        mask.extend((0..draws).map(|_| if rng.next_f64() < keep { scale } else { 0.0 }));
        mask.resize(end, 0.0);
    }
    Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_hot_embedding_equals_the_lookup_with_its_gradient() {
        let values: Vec<f32> = (0..7 * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        let table = candle_core::Var::from_vec(values, (7, 3), &Device::Cpu).unwrap();
        let ids = Tensor::new(&[4u32, 0, 6, 4, 2], &Device::Cpu).unwrap();
        let looked_up = table.index_select(&ids, 0).unwrap();
        let by_product = embed_by_product(&ids, &table).unwrap();
        let diff = (&looked_up - &by_product)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        let weights = Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu).unwrap();
        let grad_of = |rows: &Tensor| {
            let loss = rows.broadcast_mul(&weights).unwrap().sum_all().unwrap();
            loss.backward()
                .unwrap()
                .get(&table)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        };
        let grad = grad_of(&by_product);
        assert_eq!(grad, grad_of(&looked_up));
        assert_eq!(grad[4], vec![2.0, 4.0, 6.0], "id 4 appears twice");
        assert_eq!(grad[5], vec![0.0; 3]);
    }
}
