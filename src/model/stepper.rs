//! Streaming generation without candle in the loop: one event per call for a small batch, on
//! weights prepared once, with no allocation per step.
//!
//! Why: a batch-1 step reads every weight once for ~8 MFLOP of work, so it waits on memory, and
//! candle's per-op dispatch, allocation and composed gate math cost more than the arithmetic.
//! Here each layer is one product over `[x_t | h_{t-1}]` on weights packed into panels
//! ([`super::kernels`]), one vectorised gate pass ([`super::gates`]), and the output layer one
//! more product. Layer 0 needs no product for its input at all: `embedding W_ih^T + b` has one
//! row per event id and is tabulated (390 x 4H). The attention block keeps its last W keys and
//! values in a ring per sequence. Weights can be held as bfloat16
//! ([`WeightPrecision::Bf16`]): half the bytes per step, with sums still in f32.

use candle_core::{DType, Result, Tensor};

use super::gates::{ForwardRow, GateInput, Simd};
use super::kernels::{Kernel, PANEL, Panels, PanelsBf16, dot};
use super::{MusicModel, State};

/// How the stepper holds its weight matrices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WeightPrecision {
    #[default]
    F32,
    /// bfloat16: 8 bits of mantissa, the f32 exponent range.
    Bf16,
}

enum Matrix {
    F32(Panels),
    Bf16(PanelsBf16),
}

impl Matrix {
    fn new(panels: Panels, precision: WeightPrecision) -> Matrix {
        match precision {
            WeightPrecision::F32 => Matrix::F32(panels),
            WeightPrecision::Bf16 => Matrix::Bf16(PanelsBf16::from_f32(&panels)),
        }
    }

    /// `out [rows, n_panels * 32] = a [rows, k] * self`.
    fn product(
        &self,
        kernel: Kernel,
        a: &[f32],
        rows: usize,
        k: usize,
        out: &mut [f32],
        ldc: usize,
    ) {
        for p in 0..ldc / PANEL {
            let c = &mut out[p * PANEL..];
            match self {
                Matrix::F32(m) => kernel.panel_product(a, k, rows, m.panel(p), k, c, ldc),
                Matrix::Bf16(m) => kernel.panel_product_bf16(a, k, rows, m.panel(p), k, c, ldc),
            }
        }
    }
}

/// `w^T` of a row-major `[n, k]` matrix, as panels of `k x 32`.
fn transposed_panels(w: &[f32], n: usize, k: usize) -> Panels {
    Panels::pack_rows(k, n.div_ceil(PANEL), w, (k, 0), |p, c| {
        let row = p * PANEL + c;
        (row < n).then_some(row)
    })
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

struct Layer {
    /// Layer 0: `W_hh^T` (`K = H`); above: `[W_ih | W_hh]^T` (`K = 2H`).
    weights: Matrix,
    k: usize,
    /// Layer 0: zeros (the table holds its biases).
    bias: Vec<f32>,
}

/// [`super::LocalAttention`] for one position at a time.
struct Attention {
    qkv: Matrix,
    qkv_bias: Vec<f32>,
    out: Matrix,
    out_bias: Vec<f32>,
    /// `[heads, W]`: the score bias for a key `d` positions back.
    rel_bias: Vec<f32>,
    norm_weight: Vec<f32>,
    norm_bias: Vec<f32>,
    heads: usize,
    window: usize,
    eps: f32,
}

/// Per-sequence keys and values of the last W positions, as rings of `[W, H]`.
struct AttentionCache {
    keys: Vec<f32>,
    values: Vec<f32>,
    /// Positions held (at most W) and the ring slot of the oldest.
    len: usize,
    oldest: usize,
    qkv: Vec<f32>,
    context: Vec<f32>,
    out: Vec<f32>,
    scores: Vec<f32>,
}

fn bias_of(linear: &candle_nn::Linear, n: usize) -> Result<Vec<f32>> {
    match linear.bias() {
        Some(b) => values(b),
        None => Ok(vec![0.0; n]),
    }
}

impl Attention {
    fn new(a: &super::LocalAttention, hidden: usize, precision: WeightPrecision) -> Result<Self> {
        let parts = a.parts();
        Ok(Attention {
            qkv: Matrix::new(
                transposed_panels(&values(parts.qkv.weight())?, 3 * hidden, hidden),
                precision,
            ),
            qkv_bias: bias_of(parts.qkv, 3 * hidden)?,
            out: Matrix::new(
                transposed_panels(&values(parts.out.weight())?, hidden, hidden),
                precision,
            ),
            out_bias: bias_of(parts.out, hidden)?,
            rel_bias: values(parts.rel_bias)?,
            norm_weight: values(parts.norm_weight)?,
            norm_bias: values(parts.norm_bias)?,
            heads: parts.heads,
            window: parts.window,
            eps: parts.eps as f32,
        })
    }

    fn cache(&self, batch: usize, hidden: usize) -> AttentionCache {
        AttentionCache {
            keys: vec![0.0; batch * self.window * hidden],
            values: vec![0.0; batch * self.window * hidden],
            len: 0,
            oldest: 0,
            qkv: vec![0.0; batch * (3 * hidden).div_ceil(PANEL) * PANEL],
            context: vec![0.0; batch * hidden],
            out: vec![0.0; batch * hidden.div_ceil(PANEL) * PANEL],
            scores: vec![0.0; self.window],
        }
    }

    /// `h [B, H]` (in place) -> `LayerNorm(h + W_o context)`, attending over the ring.
    fn step(&self, kernel: Kernel, simd: Simd, h: &mut [f32], c: &mut AttentionCache) {
        let hidden = self.norm_weight.len();
        let batch = h.len() / hidden;
        let (w, d) = (self.window, hidden / self.heads);
        let ld = (3 * hidden).div_ceil(PANEL) * PANEL;
        self.qkv.product(kernel, h, batch, hidden, &mut c.qkv, ld);
        // The new position goes after the newest; a full ring overwrites the oldest.
        let slot = (c.oldest + c.len) % w;
        if c.len == w {
            c.oldest = (c.oldest + 1) % w;
        } else {
            c.len += 1;
        }
        let n = c.len;
        let scale = 1.0 / (d as f32).sqrt();
        for b in 0..batch {
            let qkv = &mut c.qkv[b * ld..b * ld + 3 * hidden];
            for (v, bias) in qkv.iter_mut().zip(&self.qkv_bias) {
                *v += bias;
            }
            let ring = b * w * hidden;
            c.keys[ring + slot * hidden..][..hidden].copy_from_slice(&qkv[hidden..2 * hidden]);
            c.values[ring + slot * hidden..][..hidden].copy_from_slice(&qkv[2 * hidden..]);
            for head in 0..self.heads {
                let q = &qkv[head * d..(head + 1) * d];
                let scores = &mut c.scores[..n];
                // Position j (oldest first) is n - 1 - j steps back.
                for (j, score) in scores.iter_mut().enumerate() {
                    let at = ring + ((c.oldest + j) % w) * hidden + head * d;
                    let k = &c.keys[at..at + d];
                    let dot = dot(q, k);
                    *score = dot * scale + self.rel_bias[head * w + (n - 1 - j)];
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let inv = 1.0 / simd.exp_shifted(scores, max);
                let context = &mut c.context[b * hidden + head * d..][..d];
                context.fill(0.0);
                for (j, &p) in scores.iter().enumerate() {
                    let at = ring + ((c.oldest + j) % w) * hidden + head * d;
                    let weight = p * inv;
                    for (acc, &v) in context.iter_mut().zip(&c.values[at..at + d]) {
                        *acc += weight * v;
                    }
                }
            }
        }
        let lo = hidden.div_ceil(PANEL) * PANEL;
        self.out
            .product(kernel, &c.context, batch, hidden, &mut c.out, lo);
        for b in 0..batch {
            let y = &mut h[b * hidden..(b + 1) * hidden];
            for ((y, &o), &bias) in y.iter_mut().zip(&c.out[b * lo..]).zip(&self.out_bias) {
                *y += o + bias;
            }
            let mean = y.iter().sum::<f32>() / hidden as f32;
            let var = y.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / hidden as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for ((v, &g), &beta) in y.iter_mut().zip(&self.norm_weight).zip(&self.norm_bias) {
                *v = (*v - mean) * inv * g + beta;
            }
        }
    }
}

struct Prepared {
    /// `[V, 4H]`: embedding row times `W_ih^T` plus both biases of layer 0.
    table: Vec<f32>,
    layers: Vec<Layer>,
    attention: Option<Attention>,
    output: Matrix,
    output_bias: Vec<f32>,
    hidden: usize,
    vocab: usize,
    kernel: Kernel,
    simd: Simd,
}

impl Prepared {
    fn new(model: &MusicModel, precision: WeightPrecision) -> Result<Prepared> {
        let (h, vocab) = (model.config.hidden, model.config.vocab_size);
        let four_h = 4 * h;
        let mut layers = Vec::new();
        let mut table = Vec::new();
        for (l, layer) in model.lstm.layers().iter().enumerate() {
            let (w_ih, w_hh, b_ih, b_hh) = layer.weights();
            let bias = (b_ih + b_hh)?;
            let w_hh_v = values(w_hh)?;
            if l == 0 {
                table = values(
                    &model
                        .embedding
                        .embeddings()
                        .matmul(&w_ih.t()?)?
                        .broadcast_add(&bias)?,
                )?;
                layers.push(Layer {
                    weights: Matrix::new(transposed_panels(&w_hh_v, four_h, h), precision),
                    k: h,
                    bias: vec![0.0; four_h],
                });
            } else {
                let w_ih_v = values(w_ih)?;
                let panels = Panels::pack(2 * h, four_h.div_ceil(PANEL), |p, kk, c| {
                    let col = p * PANEL + c;
                    match (col < four_h, kk < h) {
                        (false, _) => 0.0,
                        (true, true) => w_ih_v[col * h + kk],
                        (true, false) => w_hh_v[col * h + kk - h],
                    }
                });
                layers.push(Layer {
                    weights: Matrix::new(panels, precision),
                    k: 2 * h,
                    bias: values(&bias)?,
                });
            }
        }
        let output = transposed_panels(&values(model.output.weight())?, vocab, h);
        let output_bias = match model.output.bias() {
            Some(b) => values(b)?,
            None => vec![0.0; vocab],
        };
        let attention = match &model.attention {
            Some(a) => Some(Attention::new(a, h, precision)?),
            None => None,
        };
        Ok(Prepared {
            table,
            layers,
            attention,
            output: Matrix::new(output, precision),
            output_bias,
            hidden: h,
            vocab,
            kernel: Kernel::detect(),
            simd: Simd::detect(),
        })
    }
}

/// Buffers of the prepared path, sized once.
struct Buffers {
    /// Per layer, rows `[x_t | h_{t-1}]` (layer 0: `[h_{t-1}]`): `[B, K]`.
    rows: Vec<Vec<f32>>,
    /// Per layer `c` `[B, H]`, and the next one being written.
    cells: Vec<Vec<f32>>,
    next_cell: Vec<f32>,
    /// Products `[B, 4H padded]` and `[B, V padded]`.
    pre: Vec<f32>,
    out: Vec<f32>,
    gates: Vec<f32>,
    tanh_c: Vec<f32>,
    zeros: Vec<f32>,
    top: Vec<f32>,
    attention: Option<AttentionCache>,
}

/// Feeds one event id per sequence and returns the logits of the next event.
pub struct Stepper<'m> {
    model: &'m MusicModel,
    batch: usize,
    prepared: Option<(Prepared, Buffers)>,
    /// The candle state, when the prepared path is not used.
    state: State,
    logits: Vec<f32>,
}

impl<'m> Stepper<'m> {
    /// The prepared path runs for f32 models on the CPU; other devices step through candle.
    pub fn new(model: &'m MusicModel, batch: usize, precision: WeightPrecision) -> Result<Self> {
        let cpu_f32 = model.device().is_cpu() && model.output.weight().dtype() == DType::F32;
        let prepared = if cpu_f32 {
            let p = Prepared::new(model, precision)?;
            let (h, four_h) = (p.hidden, 4 * p.hidden);
            let buffers = Buffers {
                rows: p.layers.iter().map(|l| vec![0.0; batch * l.k]).collect(),
                cells: p.layers.iter().map(|_| vec![0.0; batch * h]).collect(),
                next_cell: vec![0.0; h],
                pre: vec![0.0; batch * four_h.div_ceil(PANEL) * PANEL],
                out: vec![0.0; batch * p.vocab.div_ceil(PANEL) * PANEL],
                gates: vec![0.0; four_h],
                tanh_c: vec![0.0; h],
                zeros: vec![0.0; four_h],
                top: vec![0.0; batch * h],
                attention: p.attention.as_ref().map(|a| a.cache(batch, h)),
            };
            Some((p, buffers))
        } else {
            None
        };
        Ok(Stepper {
            model,
            batch,
            prepared,
            state: model.zero_state(batch)?,
            logits: vec![0.0; batch * model.config.vocab_size],
        })
    }

    /// `ids` holds one id per sequence; returns logits `[B * V]` (row-major).
    pub fn step(&mut self, ids: &[u32]) -> Result<&[f32]> {
        if ids.len() != self.batch {
            candle_core::bail!("stepper: {} ids for a batch of {}", ids.len(), self.batch)
        }
        let vocab = self.model.config.vocab_size;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            candle_core::bail!("stepper: id {bad} is outside the vocabulary of {vocab}")
        }
        let Some((p, buf)) = self.prepared.as_mut() else {
            let ids = Tensor::from_vec(ids.to_vec(), ids.len(), self.model.device())?;
            let logits = self.model.step(&ids, &mut self.state)?;
            self.state = self.state.detach();
            self.logits = values(&logits)?;
            return Ok(&self.logits);
        };
        let (b, h, four_h) = (self.batch, p.hidden, 4 * p.hidden);
        let ldc = four_h.div_ceil(PANEL) * PANEL;
        let layers = p.layers.len();
        for l in 0..layers {
            let layer = &p.layers[l];
            layer
                .weights
                .product(p.kernel, &buf.rows[l], b, layer.k, &mut buf.pre, ldc);
            let x_width = layer.k - h;
            for (bi, &id) in ids.iter().enumerate() {
                let input: &[f32] = if l == 0 {
                    &p.table[id as usize * four_h..][..four_h]
                } else {
                    &buf.zeros
                };
                let pre = &buf.pre[bi * ldc..][..four_h];
                let (g0, rest) = buf.gates.split_at_mut(h);
                let (g1, rest) = rest.split_at_mut(h);
                let (g2, g3) = rest.split_at_mut(h);
                let h_out = &mut buf.rows[l][bi * layer.k + x_width..][..h];
                p.simd.forward(ForwardRow {
                    recurrent: [0, 1, 2, 3].map(|g| &pre[g * h..(g + 1) * h]),
                    input: GateInput::Given([0, 1, 2, 3].map(|g| &input[g * h..(g + 1) * h])),
                    bias: [0, 1, 2, 3].map(|g| &layer.bias[g * h..(g + 1) * h]),
                    c_prev: &buf.cells[l][bi * h..(bi + 1) * h],
                    c: &mut buf.next_cell,
                    h: h_out,
                    gates: [g0, g1, g2, g3],
                    tanh_c: &mut buf.tanh_c,
                });
                buf.cells[l][bi * h..(bi + 1) * h].copy_from_slice(&buf.next_cell);
            }
            // This layer's new h is the next layer's input (or the stack's output).
            for bi in 0..b {
                let src = bi * layer.k + x_width;
                let (row, next) = buf.rows.split_at_mut(l + 1);
                let h_new = &row[l][src..src + h];
                match next.first_mut() {
                    Some(above) => above[bi * 2 * h..][..h].copy_from_slice(h_new),
                    None => buf.top[bi * h..(bi + 1) * h].copy_from_slice(h_new),
                }
            }
        }
        if let (Some(attention), Some(cache)) = (&p.attention, &mut buf.attention) {
            attention.step(p.kernel, p.simd, &mut buf.top, cache);
        }
        let ldo = p.vocab.div_ceil(PANEL) * PANEL;
        p.output
            .product(p.kernel, &buf.top, b, h, &mut buf.out, ldo);
        for bi in 0..b {
            let row = &mut self.logits[bi * p.vocab..(bi + 1) * p.vocab];
            for ((dst, &v), &bias) in row.iter_mut().zip(&buf.out[bi * ldo..]).zip(&p.output_bias) {
                *dst = v + bias;
            }
        }
        Ok(&self.logits)
    }
}
