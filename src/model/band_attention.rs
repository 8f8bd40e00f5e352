//! The core of [`super::LocalAttention`] for a whole sequence as one candle custom op (CPU, f32):
//! scores inside the causal band of width W, softmax, weighted sum of values, with a hand-written
//! backward pass.
//!
//! Why: the composed version builds the full `T x T` score matrix per head and masks it to the
//! band (at T = 512, W = 64: 8 times the needed work), and every element-wise step of the softmax
//! over those `B x heads x T x T` values is a separate pass with its own allocation, forward and
//! backward: measured, it was two thirds of an `lstm-attention` training step. Here each
//! position scores only its W keys, and the probabilities (`B x heads x T x W`) are kept for the
//! backward pass.
//!
//! Inputs: `qkv [B, T, 3H]` (q, k, v, each `heads x d`, as `LocalAttention` splits them) and
//! `rel_bias [heads, W]` (the bias for a key `back` positions behind). Output: the context
//! `[B, T, H]`, heads side by side.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu_values::{poisoned, storage_values, take_saved, with_values};
use super::gates::{PORTABLE_FUSED, Simd, madd};
use super::kernels::axpy;
use super::transpose::{TILE, transpose_tile};

pub struct BandAttentionOp {
    heads: usize,
    simd: Simd,
    keep_for_backward: bool,
    /// Softmax probabilities `[B, heads, T, W]`, indexed by how far back the key is.
    probabilities: Mutex<Option<Vec<f32>>>,
    #[cfg(feature = "cuda")]
    probabilities_cuda: Mutex<Option<candle_core::cuda::cudarc::driver::CudaSlice<f32>>>,
}

impl BandAttentionOp {
    pub fn new(heads: usize, keep_for_backward: bool) -> Self {
        BandAttentionOp {
            heads,
            simd: Simd::detect(),
            keep_for_backward,
            probabilities: Mutex::new(None),
            #[cfg(feature = "cuda")]
            probabilities_cuda: Mutex::new(None),
        }
    }
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    hidden: usize,
    heads: usize,
    d: usize,
    window: usize,
}

impl Dims {
    fn of(qkv: &Shape, bias: &Shape, heads: usize) -> Result<Dims> {
        let (b, t, three_h) = qkv.dims3()?;
        let (bias_heads, window) = bias.dims2()?;
        let hidden = three_h / 3;
        if heads == 0 || bias_heads != heads || three_h != 3 * hidden || hidden % heads != 0 {
            bail!("band attention: shapes {qkv:?} {bias:?} do not fit {heads} heads")
        }
        Ok(Dims {
            b,
            t,
            hidden,
            heads,
            d: hidden / heads,
            window,
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_sizes(&self) -> super::cuda_band_attention::Sizes {
        super::cuda_band_attention::Sizes {
            b: self.b,
            t: self.t,
            hidden: self.hidden,
            heads: self.heads,
            window: self.window,
        }
    }

    /// Keys position `t` sees: `back` = 0 ..= this - 1.
    fn reach(&self, t: usize) -> usize {
        self.window.min(t + 1)
    }
}

/// The rows `[q | k | v]` of one sequence of `qkv [B, T, 3H]`.
#[derive(Clone, Copy)]
struct Rows<'a> {
    qkv: &'a [f32],
    bi: usize,
}

impl Rows<'_> {
    #[inline(always)]
    fn at(&self, dm: &Dims, pos: usize) -> &[f32] {
        let width = 3 * dm.hidden;
        &self.qkv[(self.bi * dm.t + pos) * width..][..width]
    }

    /// The sequence's rows together, `[T, 3H]`.
    fn all(&self, dm: &Dims) -> &[f32] {
        let len = dm.t * 3 * dm.hidden;
        &self.qkv[self.bi * len..][..len]
    }
}

/// Keys scored together: their sums stay in registers (four AVX-512 vectors), where one dot
/// product per key ended in a horizontal sum each.
const KEY_BLOCK: usize = 64;

/// Positions scored together by [`BandScores`]: each load of keys serves all of them.
const QUERIES: usize = 4;

/// Keys a group of [`QUERIES`] positions scores: the union of their bands (up to W + 3 keys).
const GROUP_KEYS: usize = 80;

/// One head's `d` columns of every position, from column `column` of the rows, transposed:
/// `out[k * stride + s]` for position `s`. Returns `stride` (`T + GROUP_KEYS`): the positions
/// past `T` are zero, so a block of keys that runs past the last position reads zeros.
#[inline(always)]
fn transpose_head(simd: Simd, dm: &Dims, rows: Rows, column: usize, out: &mut Vec<f32>) -> usize {
    let stride = dm.t + GROUP_KEYS.max(KEY_BLOCK);
    // Positions below T are all written below; the padding past T, zeroed once, stays zero when
    // the table is reused for the next head.
    if out.len() != dm.d * stride {
        out.clear();
        out.resize(dm.d * stride, 0.0);
    }
    // In square tiles, so that the lines a tile reads and writes stay in L1.
    for s0 in (0..dm.t).step_by(TILE) {
        let positions = s0..(s0 + TILE).min(dm.t);
        for k0 in (0..dm.d).step_by(TILE) {
            let features = column + k0..column + (k0 + TILE).min(dm.d);
            let mut tile: [&[f32]; TILE] = [&[]; TILE];
            for (row, s) in tile.iter_mut().zip(positions.clone()) {
                *row = &rows.at(dm, s)[features.clone()];
            }
            let first = k0 * stride + s0;
            transpose_tile(simd, &tile[..positions.len()], &mut out[first..], stride);
        }
    }
    stride
}

/// One head's `d` columns of every position, from column `column` of `rows` (row stride
/// `stride`), packed as `[T, d]`. The rows of `qkv` (3 KB at H256) and of the gradient (1 KB) sit
/// a multiple of 1 KB apart, so the 64 rows a position reads map to a quarter of L1's sets and
/// evict each other; packed, consecutive rows fill consecutive sets (docs/BENCHMARKS.md, issue
/// 14 seventh pass).
#[inline(always)]
fn pack_head(
    t: usize,
    d: usize,
    values: &[f32],
    (stride, column): (usize, usize),
    out: &mut Vec<f32>,
) {
    out.clear();
    out.reserve(t * d);
    for s in 0..t {
        out.extend_from_slice(&values[s * stride + column..][..d]);
    }
}

/// `out[j] = x . column(first + j)` of a [`transpose_head`] table, KEY_BLOCK positions at a time.
#[inline(always)]
fn products<const FUSED: bool>(
    x: &[f32],
    table: &[f32],
    stride: usize,
    first: usize,
    out: &mut [f32],
) {
    for (block, chunk) in out.chunks_mut(KEY_BLOCK).enumerate() {
        let start = first + block * KEY_BLOCK;
        let mut sums = [0f32; KEY_BLOCK];
        for (k, &xk) in x.iter().enumerate() {
            let row = &table[k * stride + start..][..KEY_BLOCK];
            for (sum, &v) in sums.iter_mut().zip(row) {
                *sum = madd::<FUSED>(xk, v, *sum);
            }
        }
        chunk.copy_from_slice(&sums[..chunk.len()]);
    }
}

/// The scores `x_pos . column(s)` of a [`transpose_head`] table over the keys `s` each position
/// sees, a position or a group at a time. Four consecutive positions whose bands fit
/// [`GROUP_KEYS`] are scored together: per feature, one load of the keys feeds four positions'
/// sums, where one position at a time waited on the loads (each sum is the same chain of
/// multiply-adds either way, so the same bits).
struct BandScores {
    group: [[f32; GROUP_KEYS]; QUERIES],
    single: Vec<f32>,
    /// The first position last scored.
    first_pos: usize,
    /// The group's first key, or `None` when the last call scored one position into `single`.
    group_first_key: Option<usize>,
}

impl BandScores {
    fn new(window: usize) -> Self {
        BandScores {
            group: [[0.0; GROUP_KEYS]; QUERIES],
            single: vec![0.0; window],
            first_pos: 0,
            group_first_key: None,
        }
    }

    /// Scores position `pos` and, where they fit one group, the next three, from `x [T, d]`
    /// packed and the key table; returns how many positions [`BandScores::of`] now gives.
    #[inline(always)]
    fn score<const FUSED: bool>(
        &mut self,
        dm: &Dims,
        x: &[f32],
        (table, stride): (&[f32], usize),
        pos: usize,
    ) -> usize {
        let d = dm.d;
        let first = pos + 1 - dm.reach(pos);
        if pos + QUERIES <= dm.t && pos + QUERIES - first <= GROUP_KEYS {
            let mut sums = [[0f32; GROUP_KEYS]; QUERIES];
            for k in 0..d {
                let row: &[f32; GROUP_KEYS] = table[k * stride + first..][..GROUP_KEYS]
                    .try_into()
                    .expect("GROUP_KEYS");
                for (q, sums) in sums.iter_mut().enumerate() {
                    let xk = x[(pos + q) * d + k];
                    for (sum, &v) in sums.iter_mut().zip(row) {
                        *sum = madd::<FUSED>(xk, v, *sum);
                    }
                }
            }
            self.group = sums;
            (self.first_pos, self.group_first_key) = (pos, Some(first));
            QUERIES
        } else {
            let scores = &mut self.single[..dm.reach(pos)];
            products::<FUSED>(&x[pos * d..][..d], table, stride, first, scores);
            (self.first_pos, self.group_first_key) = (pos, None);
            1
        }
    }

    /// The scores of position `pos` (one [`BandScores::score`] just gave), `[j]` for key
    /// `pos + 1 - reach + j`.
    #[inline(always)]
    fn of(&self, dm: &Dims, pos: usize) -> &[f32] {
        let reach = dm.reach(pos);
        match self.group_first_key {
            Some(first_key) => {
                let offset = pos + 1 - reach - first_key;
                &self.group[pos - self.first_pos][offset..offset + reach]
            }
            None => &self.single[..reach],
        }
    }
}

/// `out = sum_i weights[i] * row(i)`, summed in `i` order, KEY_BLOCK features at a time in
/// registers: adding each row into `out` in memory chained every add of a feature through a store
/// and a load (about half of the band forward's samples in `perf annotate`).
///
/// `out` is written, never read: every row of the context and the gradients is one call's, and
/// reading those cold lines to add to them stalled on each (12-16 % of the band kernels'
/// samples; docs/BENCHMARKS.md, issue 14, eighth pass).
#[inline(always)]
fn weighted_rows<'a, const FUSED: bool>(
    weights: &[f32],
    row: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
) {
    for start in (0..out.len()).step_by(KEY_BLOCK) {
        let out = &mut out[start..];
        if out.len() < KEY_BLOCK {
            out.fill(0.0);
            for (i, &w) in weights.iter().enumerate() {
                axpy(w, &row(i)[start..], out);
            }
            continue;
        }
        let mut sums = [0f32; KEY_BLOCK];
        for (i, &w) in weights.iter().enumerate() {
            let r = &row(i)[start..start + KEY_BLOCK];
            for (sum, &v) in sums.iter_mut().zip(r) {
                *sum = madd::<FUSED>(w, v, *sum);
            }
        }
        out[..KEY_BLOCK].copy_from_slice(&sums);
    }
}

/// One sequence: context `[T, H]` and probabilities `[heads, T, W]`.
#[inline(always)]
fn forward_sequence<const FUSED: bool>(
    simd: Simd,
    dm: &Dims,
    rows: Rows,
    bias: &[f32],
    context: &mut [f32],
    probs: &mut [f32],
) {
    let (hidden, d, window) = (dm.hidden, dm.d, dm.window);
    let scale = 1.0 / (d as f32).sqrt();
    let (mut keys, mut scores) = (Vec::new(), BandScores::new(window));
    let (mut queries, mut values) = (Vec::new(), Vec::new());
    let sequence = rows.all(dm);
    for head in 0..dm.heads {
        let at = head * d;
        let stride = transpose_head(simd, dm, rows, hidden + at, &mut keys);
        pack_head(dm.t, d, sequence, (3 * hidden, at), &mut queries);
        pack_head(
            dm.t,
            d,
            sequence,
            (3 * hidden, 2 * hidden + at),
            &mut values,
        );
        let mut scored = 0;
        for pos in 0..dm.t {
            if pos == scored {
                scored += scores.score::<FUSED>(dm, &queries, (&keys, stride), pos);
            }
            let by_position = scores.of(dm, pos);
            let p = &mut probs[(head * dm.t + pos) * window..][..window];
            let reach = by_position.len();
            for (back, score) in p[..reach].iter_mut().enumerate() {
                *score = by_position[reach - 1 - back] * scale + bias[head * window + back];
            }
            let max = p[..reach].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            // Vectorised, not libm's scalar `expf` per key: the band forward's share of a
            // training step fell from 3.5 % to 3.0 % in `perf` (docs/BENCHMARKS.md).
            let sum = simd.exp_shifted(&mut p[..reach], max);
            p[..reach].iter_mut().for_each(|weight| *weight /= sum);
            let v = |back: usize| &values[(pos - back) * d..][..d];
            weighted_rows::<FUSED>(&p[..reach], v, &mut context[pos * hidden + at..][..d]);
        }
    }
}

/// One sequence's gradients: into `dqkv [T, 3H]`; returns this sequence's `d rel_bias`.
#[inline(always)]
fn backward_sequence<const FUSED: bool>(
    simd: Simd,
    dm: &Dims,
    rows: Rows,
    grad: &[f32],
    probs: &[f32],
    dqkv: &mut [f32],
) -> Vec<f32> {
    let (hidden, d, window) = (dm.hidden, dm.d, dm.window);
    let scale = 1.0 / (d as f32).sqrt();
    let mut dbias = vec![0f32; dm.heads * window];
    let (mut values, mut scores) = (Vec::new(), BandScores::new(window));
    // Per position and key, `ds * scale`: the weight of k_s in dq_pos and of q_pos in dk_s.
    let mut scaled = vec![0f32; dm.t * window];
    let (mut p_seen, mut scaled_seen) = (vec![0f32; window], vec![0f32; window]);
    let (mut queries, mut keys, mut grads) = (Vec::new(), Vec::new(), Vec::new());
    let sequence = rows.all(dm);
    for head in 0..dm.heads {
        let at = head * d;
        let stride = transpose_head(simd, dm, rows, 2 * hidden + at, &mut values);
        pack_head(dm.t, d, sequence, (3 * hidden, at), &mut queries);
        pack_head(dm.t, d, sequence, (3 * hidden, hidden + at), &mut keys);
        pack_head(dm.t, d, grad, (hidden, at), &mut grads);
        let probs = &probs[head * dm.t * window..][..dm.t * window];
        let mut scored = 0;
        for pos in 0..dm.t {
            if pos == scored {
                scored += scores.score::<FUSED>(dm, &grads, (&values, stride), pos);
            }
            let by_position = scores.of(dm, pos);
            let p = &probs[pos * window..][..window];
            let reach = by_position.len();
            // dp = g . v_s; dscore = p (dp - sum p dp).
            let weighted: f32 = (0..reach)
                .map(|back| p[back] * by_position[reach - 1 - back])
                .sum();
            let scaled = &mut scaled[pos * window..][..window];
            for back in 0..reach {
                let ds = p[back] * (by_position[reach - 1 - back] - weighted);
                dbias[head * window + back] += ds;
                scaled[back] = ds * scale;
            }
            let k = |back: usize| &keys[(pos - back) * d..][..d];
            weighted_rows::<FUSED>(&scaled[..reach], k, &mut dqkv[pos * 3 * hidden + at..][..d]);
        }
        // Per key position s, over the positions s + i that see it (i = how far back it is from
        // them): dv_s = sum p g, dk_s = sum ds * scale * q, in registers (adding into each row
        // once per position that sees it chained the adds through memory).
        for s in 0..dm.t {
            let seen = window.min(dm.t - s);
            for i in 0..seen {
                p_seen[i] = probs[(s + i) * window + i];
                scaled_seen[i] = scaled[(s + i) * window + i];
            }
            let g = |i: usize| &grads[(s + i) * d..][..d];
            let dv = &mut dqkv[s * 3 * hidden + 2 * hidden + at..][..d];
            weighted_rows::<FUSED>(&p_seen[..seen], g, dv);
            let q = |i: usize| &queries[(s + i) * d..][..d];
            let dk = &mut dqkv[s * 3 * hidden + hidden + at..][..d];
            weighted_rows::<FUSED>(&scaled_seen[..seen], q, dk);
        }
    }
    dbias
}

/// [`forward_sequence`] built for the instruction set `simd` names (vectorised dots and sums).
fn simd_forward(simd: Simd, dm: &Dims, rows: Rows, bias: &[f32], ctx: &mut [f32], p: &mut [f32]) {
    match simd {
        // SAFETY: `Simd::detect` names an instruction set only where the CPU has it.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { forward_avx512(dm, rows, bias, ctx, p) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { forward_avx2(dm, rows, bias, ctx, p) },
        _ => forward_sequence::<PORTABLE_FUSED>(simd, dm, rows, bias, ctx, p),
    }
}

/// [`backward_sequence`] built for the instruction set `simd` names.
fn simd_backward(
    simd: Simd,
    dm: &Dims,
    rows: Rows,
    grad: &[f32],
    probs: &[f32],
    dqkv: &mut [f32],
) -> Vec<f32> {
    match simd {
        // SAFETY: `Simd::detect` names an instruction set only where the CPU has it.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { backward_avx512(dm, rows, grad, probs, dqkv) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { backward_avx2(dm, rows, grad, probs, dqkv) },
        _ => backward_sequence::<PORTABLE_FUSED>(simd, dm, rows, grad, probs, dqkv),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn forward_avx512(dm: &Dims, rows: Rows, bias: &[f32], ctx: &mut [f32], p: &mut [f32]) {
    forward_sequence::<true>(Simd::Avx512, dm, rows, bias, ctx, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2(dm: &Dims, rows: Rows, bias: &[f32], ctx: &mut [f32], p: &mut [f32]) {
    forward_sequence::<true>(Simd::Avx2, dm, rows, bias, ctx, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn backward_avx512(
    dm: &Dims,
    rows: Rows,
    grad: &[f32],
    probs: &[f32],
    dqkv: &mut [f32],
) -> Vec<f32> {
    backward_sequence::<true>(Simd::Avx512, dm, rows, grad, probs, dqkv)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_avx2(
    dm: &Dims,
    rows: Rows,
    grad: &[f32],
    probs: &[f32],
    dqkv: &mut [f32],
) -> Vec<f32> {
    backward_sequence::<true>(Simd::Avx2, dm, rows, grad, probs, dqkv)
}

impl CustomOp2 for BandAttentionOp {
    fn name(&self) -> &'static str {
        "band-attention"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dm = Dims::of(l1.shape(), l2.shape(), self.heads)?;
        let (context, probs) =
            super::cuda_band_attention::forward((s1, l1), (s2, l2), dm.cuda_sizes())?;
        if self.keep_for_backward {
            *self
                .probabilities_cuda
                .lock()
                .map_err(|_| poisoned("band attention"))? = Some(probs);
        }
        Ok((context, Shape::from((dm.b, dm.t, dm.hidden))))
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dm = Dims::of(l1.shape(), l2.shape(), self.heads)?;
        let Dims {
            b,
            t,
            hidden,
            heads,
            window,
            ..
        } = dm;
        let qkv = storage_values::<f32>(s1, l1, "band attention: qkv")?;
        let bias = storage_values::<f32>(s2, l2, "band attention: bias")?;
        let mut context = vec![0f32; b * t * hidden];
        let mut probs = vec![0f32; b * heads * t * window];
        context
            .par_chunks_mut(t * hidden)
            .zip(probs.par_chunks_mut(heads * t * window))
            .enumerate()
            .for_each(|(bi, (context, probs))| {
                let rows = Rows { qkv, bi };
                simd_forward(self.simd, &dm, rows, bias, context, probs);
            });
        if self.keep_for_backward {
            *self
                .probabilities
                .lock()
                .map_err(|_| poisoned("band attention"))? = Some(probs);
        }
        Ok((CpuStorage::F32(context), Shape::from((b, t, hidden))))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        rel_bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dm = Dims::of(qkv.shape(), rel_bias.shape(), self.heads)?;
        #[cfg(feature = "cuda")]
        if qkv.device().is_cuda() {
            let probs = take_saved(&self.probabilities_cuda, "band attention")?;
            let (dqkv, dbias) =
                super::cuda_band_attention::backward(qkv, grad_res, probs, dm.cuda_sizes())?;
            return Ok((Some(dqkv), Some(dbias)));
        }
        let probs = take_saved(&self.probabilities, "band attention")?;
        let Dims {
            b,
            t,
            hidden,
            heads,
            window,
            ..
        } = dm;
        let mut dqkv = vec![0f32; b * t * 3 * hidden];
        let dbias = with_values(qkv, |qkv: &[f32]| {
            with_values(grad_res, |grad: &[f32]| {
                let per_sequence: Vec<Vec<f32>> = dqkv
                    .par_chunks_mut(t * 3 * hidden)
                    .enumerate()
                    .map(|(bi, dqkv)| {
                        let rows = Rows { qkv, bi };
                        let probs = &probs[bi * heads * t * window..][..heads * t * window];
                        let grad = &grad[bi * t * hidden..][..t * hidden];
                        simd_backward(self.simd, &dm, rows, grad, probs, dqkv)
                    })
                    .collect();
                // Summed in sequence order: rayon's reduction tree depends on scheduling, and a
                // different order of float additions would make two runs of one seed diverge.
                let mut total = vec![0f32; heads * window];
                for part in per_sequence {
                    total.iter_mut().zip(&part).for_each(|(x, y)| *x += y);
                }
                Ok(total)
            })
        })?;
        let device = qkv.device();
        Ok((
            Some(Tensor::from_vec(dqkv, (b, t, 3 * hidden), device)?),
            Some(Tensor::from_vec(dbias, (heads, window), device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grouped or one at a time, every position's scores are the same chains of multiply-adds.
    #[test]
    fn grouped_scores_have_the_bits_of_one_position_at_a_time() {
        for (t, window, d) in [(13, 4, 8), (90, 70, 16), (9, 77, 5), (120, 78, 3)] {
            let dm = Dims {
                b: 1,
                t,
                hidden: d,
                heads: 1,
                d,
                window,
            };
            let x: Vec<f32> = (0..t * d).map(|i| (i as f32 * 0.37).sin()).collect();
            let qkv: Vec<f32> = (0..t * 3 * d).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut table = Vec::new();
            let stride = transpose_head(
                Simd::detect(),
                &dm,
                Rows { qkv: &qkv, bi: 0 },
                d,
                &mut table,
            );
            let mut scores = BandScores::new(window);
            let (mut scored, mut grouped) = (0, 0);
            for pos in 0..t {
                if pos == scored {
                    let count = scores.score::<true>(&dm, &x, (&table, stride), pos);
                    grouped += usize::from(count > 1);
                    scored += count;
                }
                let reach = dm.reach(pos);
                let mut alone = vec![0f32; reach];
                products::<true>(
                    &x[pos * d..][..d],
                    &table,
                    stride,
                    pos + 1 - reach,
                    &mut alone,
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(scores.of(&dm, pos)),
                    bits(&alone),
                    "T {t} W {window} pos {pos}"
                );
            }
            // Both paths ran: groups, and single positions (the tail, or bands too wide).
            assert!(grouped > 0 && scored - 4 * grouped > 0, "T {t} W {window}");
        }
    }
}
