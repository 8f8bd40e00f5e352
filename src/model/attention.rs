//! Causal *local* multi-head self-attention over LSTM outputs, with a learned relative position
//! bias per head (Shaw et al., 2018, in the simple scalar-bias form of Raffel et al., 2020).
//!
//! Position t attends to positions t-W+1..=t only:
//! `score(t, s) = q_t . k_s / sqrt(d) + bias[head, t - s]`, `context_t = sum_s softmax(score) v_s`,
//! `y_t = LayerNorm(h_t + W_o context_t)`. Training computes all positions at once with a band
//! mask; generation keeps the last W keys and values per head.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

use super::band_attention::BandAttentionOp;
use super::dense::dense;
use super::layer_norm::layer_norm;

/// Where [`BandAttentionOp`] runs: the CPU and CUDA (`cuda_band_attention.rs`, checked on an
/// H200 by `.ci/gpu-check.sh`). `ECHOAI_CUDA_BAND_ATTENTION=0` keeps CUDA on the composed
/// attention, so the two can be compared on the same card.
fn band_op_runs_on(device: &Device) -> bool {
    device.is_cpu()
        || (device.is_cuda()
            && std::env::var_os("ECHOAI_CUDA_BAND_ATTENTION").is_none_or(|v| v != "0"))
}

/// Large enough to zero a softmax weight, small enough that `0 * MASKED` stays finite in backward.
const MASKED: f32 = -1e9;
const LAYER_NORM_EPS: f64 = 1e-5;

pub struct LocalAttention {
    qkv: Linear,
    out: Linear,
    /// `[heads, W]`: the bias for a key `d` positions back.
    rel_bias: Tensor,
    norm_weight: Tensor,
    norm_bias: Tensor,
    heads: usize,
    window: usize,
    hidden: usize,
}

/// The last (at most) W keys and values, oldest first: `[B, heads, n, d]` each.
#[derive(Clone, Debug, Default)]
pub struct AttentionCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
}

impl AttentionCache {
    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn detach(&self) -> Self {
        AttentionCache {
            keys: self.keys.as_ref().map(Tensor::detach),
            values: self.values.as_ref().map(Tensor::detach),
        }
    }
}

/// The weights of a [`LocalAttention`], for code that runs it outside candle.
pub struct AttentionParts<'a> {
    pub qkv: &'a Linear,
    pub out: &'a Linear,
    pub rel_bias: &'a Tensor,
    pub norm_weight: &'a Tensor,
    pub norm_bias: &'a Tensor,
    pub heads: usize,
    pub window: usize,
    pub eps: f64,
}

impl LocalAttention {
    pub fn parts(&self) -> AttentionParts<'_> {
        AttentionParts {
            qkv: &self.qkv,
            out: &self.out,
            rel_bias: &self.rel_bias,
            norm_weight: &self.norm_weight,
            norm_bias: &self.norm_bias,
            heads: self.heads,
            window: self.window,
            eps: LAYER_NORM_EPS,
        }
    }

    pub fn new(hidden: usize, heads: usize, window: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(LocalAttention {
            qkv: candle_nn::linear(hidden, 3 * hidden, vb.pp("qkv"))?,
            out: candle_nn::linear(hidden, hidden, vb.pp("out"))?,
            rel_bias: vb.get_with_hints((heads, window), "rel_bias", Init::Const(0.0))?,
            norm_weight: vb.get_with_hints(hidden, "norm.weight", Init::Const(1.0))?,
            norm_bias: vb.get_with_hints(hidden, "norm.bias", Init::Const(0.0))?,
            heads,
            window,
            hidden,
        })
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// `[B, T, 3H]` -> q, k, v each `[B, heads, T, d]`.
    fn split_heads(&self, qkv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = qkv.dims3()?;
        let qkv = qkv
            .reshape((b, t, 3, self.heads, self.head_dim()))?
            .permute((2, 0, 3, 1, 4))?;
        Ok((
            qkv.get(0)?.contiguous()?,
            qkv.get(1)?.contiguous()?,
            qkv.get(2)?.contiguous()?,
        ))
    }

    /// `h [B, T, H]` -> `[B, T, H]`, every position at once.
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        self.forward_with(h, true)
    }

    /// As [`LocalAttention::forward`]; with `banded` on the CPU or CUDA in f32 the scores, softmax
    /// and context run as [`BandAttentionOp`] (only the W keys each position sees), otherwise as
    /// composed candle ops over a masked `T x T` matrix (the reference).
    pub fn forward_with(&self, h: &Tensor, banded: bool) -> Result<Tensor> {
        let (b, t, _) = h.dims3()?;
        // Once for both readers (the projection and the residual): off the CPU the LSTM's output
        // arrives as a view that skips each sequence's cell-state row (on the CPU it arrives
        // whole, `Sequence::WithCell`, and this is a no-op).
        let h = &h.contiguous()?;
        let qkv = dense(h, &self.qkv)?;
        if banded && band_op_runs_on(h.device()) && h.dtype() == DType::F32 && b * t > 0 {
            let qkv = qkv.contiguous()?;
            let keep = qkv.track_op() || self.rel_bias.track_op();
            let op = BandAttentionOp::new(self.heads, keep);
            let context = qkv.apply_op2(&self.rel_bias.contiguous()?, op)?;
            return self.residual(h, &context);
        }
        let (q, k, v) = self.split_heads(&qkv)?;
        let scale = 1.0 / (self.head_dim() as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let bias = self.band_bias(t, h.device())?;
        let weights = candle_nn::ops::softmax(&scores.broadcast_add(&bias)?, D::Minus1)?;
        let context = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, self.hidden))?;
        self.residual(h, &context)
    }

    /// `[heads, T, T]`: the relative bias inside the causal band, `MASKED` outside it.
    fn band_bias(&self, t: usize, device: &Device) -> Result<Tensor> {
        if !device.is_cpu() {
            return self.band_bias_by_product(t, device);
        }
        let mut index = Vec::with_capacity(t * t);
        let mut mask = Vec::with_capacity(t * t);
        for row in 0..t {
            for col in 0..t {
                let back = row as i64 - col as i64;
                let inside = back >= 0 && (back as usize) < self.window;
                index.push(if inside { back as u32 } else { 0 });
                mask.push(if inside { 0.0f32 } else { MASKED });
            }
        }
        let index = Tensor::from_vec(index, t * t, device)?;
        let mask = Tensor::from_vec(mask, (1, t, t), device)?;
        self.rel_bias
            .index_select(&index, 1)?
            .reshape((self.heads, t, t))?
            .broadcast_add(&mask)
    }

    /// As [`Self::band_bias`], built on the device as `rel_bias [heads, W] x S [W, T*T]` with
    /// `S[w, (r, c)] = (r - c == w)`. An `index_select` of `T*T` ids would leave the backward to
    /// candle's CUDA `index_add`, one thread per head walking all `T*T` ids (about half of a
    /// 32 x 512 lstm-attention step on an H200, issue 13); this backward is a GEMM.
    fn band_bias_by_product(&self, t: usize, device: &Device) -> Result<Tensor> {
        let positions = Tensor::arange(0i64, t as i64, device)?;
        let back = positions
            .unsqueeze(1)?
            .broadcast_sub(&positions.unsqueeze(0)?)?
            .flatten_all()?;
        let offsets = Tensor::arange(0i64, self.window as i64, device)?;
        let select = offsets
            .unsqueeze(1)?
            .broadcast_eq(&back.unsqueeze(0)?)?
            .to_dtype(DType::F32)?;
        let inside = select.sum(0)?;
        let masked = Tensor::full(MASKED, t * t, device)?;
        let mask = inside
            .ne(0f32)?
            .where_cond(&Tensor::zeros(t * t, DType::F32, device)?, &masked)?
            .reshape((1, t, t))?;
        self.rel_bias
            .matmul(&select)?
            .reshape((self.heads, t, t))?
            .broadcast_add(&mask)
    }

    fn residual(&self, h: &Tensor, context: &Tensor) -> Result<Tensor> {
        let y = (h + dense(context, &self.out)?)?;
        layer_norm(
            &y,
            &self.norm_weight,
            &self.norm_bias,
            LAYER_NORM_EPS as f32,
        )
    }

    /// One position: `h [B, H]` with the cache of earlier positions -> `[B, H]`.
    pub fn step(&self, h: &Tensor, cache: &mut AttentionCache) -> Result<Tensor> {
        let (b, _) = h.dims2()?;
        let (q, k, v) = self.split_heads(&dense(&h.unsqueeze(1)?, &self.qkv)?)?;
        let append = |old: &Option<Tensor>, new: Tensor| -> Result<Tensor> {
            let all = match old {
                Some(old) => Tensor::cat(&[old, &new], 2)?,
                None => new,
            };
            let n = all.dims()[2];
            if n > self.window {
                all.narrow(2, n - self.window, self.window)?.contiguous()
            } else {
                Ok(all)
            }
        };
        let keys = append(&cache.keys, k)?;
        let values = append(&cache.values, v)?;
        let n = keys.dims()[2];
        let scale = 1.0 / (self.head_dim() as f64).sqrt();
        // Slot j (oldest first) is n-1-j positions back.
        let back: Vec<u32> = (0..n).map(|j| (n - 1 - j) as u32).collect();
        let bias = self
            .rel_bias
            .index_select(&Tensor::from_vec(back, n, h.device())?, 1)?
            .reshape((1, self.heads, 1, n))?;
        let scores = (q.matmul(&keys.t()?)? * scale)?.broadcast_add(&bias)?;
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let context = weights.matmul(&values)?.reshape((b, self.hidden))?;
        cache.keys = Some(keys);
        cache.values = Some(values);
        self.residual(h, &context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    #[test]
    fn the_band_bias_built_by_product_equals_the_indexed_one() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let attention = LocalAttention::new(8, 2, 3, &vb).unwrap();
        let values: Vec<f32> = (0..2 * 3).map(|i| i as f32 * 0.5 - 1.0).collect();
        let rel_bias = Tensor::from_vec(values, (2, 3), &Device::Cpu).unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if name.ends_with("rel_bias") {
                var.set(&rel_bias).unwrap();
            }
        }
        for t in [1, 3, 7] {
            let indexed = attention.band_bias(t, &Device::Cpu).unwrap();
            let by_product = attention.band_bias_by_product(t, &Device::Cpu).unwrap();
            assert_eq!(
                indexed.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                by_product.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "T = {t}"
            );
        }
    }
}
