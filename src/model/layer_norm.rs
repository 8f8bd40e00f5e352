//! Layer normalisation over the last dimension as one candle custom op (CPU, f32), with a
//! hand-written backward pass.
//!
//! Why: candle_nn's fused layer norm has no backward pass, and the composed one
//! (`layer_norm_slow`) is eleven ops whose backward passes add up to some thirty passes over the
//! activations, each with its own allocation, and candle's slow reduction over leading
//! dimensions for the gain and shift: 32 ms forward and backward for one `[16, 256, 256]` tensor
//! on two cores (docs/BENCHMARKS.md, issue 14 sixth pass). Here the forward is one pass per row
//! and the backward two.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu_values::{storage_values, with_values};

/// Rows per part of the gain and shift gradients' sums: the parts are added in order, so the
/// bits do not depend on the number of threads.
const ROWS_PER_PART: usize = 64;

pub(super) struct LayerNormOp {
    pub(super) eps: f32,
}

/// `(x - mean) / sqrt(var + eps) * gain + shift` over the last dimension of `x`, the variance
/// biased (as PyTorch and `layer_norm_slow`): on the CPU in f32 as one op, elsewhere composed.
pub fn layer_norm(x: &Tensor, gain: &Tensor, shift: &Tensor, eps: f32) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 || x.rank() == 0 {
        return candle_nn::ops::layer_norm_slow(x, gain, shift, eps);
    }
    // Leading dimensions as they are: a reshape is a graph node whose backward pass costs a
    // zeroed tensor and an add of the gradient's size.
    x.contiguous()?.apply_op3(
        &gain.contiguous()?,
        &shift.contiguous()?,
        LayerNormOp { eps },
    )
}

/// `(rows, width)` of `x [.., width]` with a gain and shift of `[width]`.
fn sizes(x: &Shape, gain: &Shape, shift: &Shape) -> Result<(usize, usize)> {
    let width = x.dims().last().copied().unwrap_or(0);
    if x.rank() == 0 || gain.dims1()? != width || shift.dims1()? != width || width == 0 {
        bail!("layer norm: shapes {x:?} {gain:?} {shift:?} do not fit together")
    }
    Ok((x.elem_count() / width, width))
}

/// A row's mean and `1 / sqrt(var + eps)`, in the composed version's order: the mean first,
/// then the mean square of the centred values.
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, width) = sizes(l1.shape(), l2.shape(), l3.shape())?;
        let x = storage_values::<f32>(s1, l1, "layer norm: x")?;
        let gain = storage_values::<f32>(s2, l2, "layer norm: gain")?;
        let shift = storage_values::<f32>(s3, l3, "layer norm: shift")?;
        let mut y = vec![0f32; rows * width];
        y.par_chunks_mut(width)
            .zip(x.par_chunks(width))
            .for_each(|(out, row)| {
                let (mean, rstd) = moments(row, self.eps);
                for (((o, v), g), s) in out.iter_mut().zip(row).zip(gain).zip(shift) {
                    *o = (v - mean) * rstd * g + s;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gain: &Tensor,
        shift: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, width) = sizes(x.shape(), gain.shape(), shift.shape())?;
        let device = x.device();
        let x_shape = x.shape();
        let eps = self.eps;
        with_values(dy, |dy: &[f32]| {
            with_values(x, |x: &[f32]| {
                with_values(gain, |gain: &[f32]| {
                    let mut dx = vec![0f32; rows * width];
                    // Per part of the rows: the sums of dy * x_hat and of dy, per column.
                    let parts: Vec<(Vec<f32>, Vec<f32>)> = dx
                        .par_chunks_mut(ROWS_PER_PART * width)
                        .zip(x.par_chunks(ROWS_PER_PART * width))
                        .zip(dy.par_chunks(ROWS_PER_PART * width))
                        .map(|((dx, x), dy)| {
                            let (mut dgain, mut dshift) = (vec![0f32; width], vec![0f32; width]);
                            let rows = dx
                                .chunks_exact_mut(width)
                                .zip(x.chunks_exact(width))
                                .zip(dy.chunks_exact(width));
                            for ((dx, x), dy) in rows {
                                let (mean, rstd) = moments(x, eps);
                                // dx = rstd (g - mean(g) - x_hat mean(g x_hat)), g = dy * gain.
                                let (mut sum_g, mut sum_gx) = (0f32, 0f32);
                                for j in 0..width {
                                    let x_hat = (x[j] - mean) * rstd;
                                    let g = dy[j] * gain[j];
                                    sum_g += g;
                                    sum_gx += g * x_hat;
                                    dgain[j] += dy[j] * x_hat;
                                    dshift[j] += dy[j];
                                }
                                let n = width as f32;
                                let (mean_g, mean_gx) = (sum_g / n, sum_gx / n);
                                for j in 0..width {
                                    let x_hat = (x[j] - mean) * rstd;
                                    dx[j] = rstd * (dy[j] * gain[j] - mean_g - x_hat * mean_gx);
                                }
                            }
                            (dgain, dshift)
                        })
                        .collect();
                    let (mut dgain, mut dshift) = (vec![0f32; width], vec![0f32; width]);
                    for (g, s) in &parts {
                        dgain.iter_mut().zip(g).for_each(|(a, b)| *a += b);
                        dshift.iter_mut().zip(s).for_each(|(a, b)| *a += b);
                    }
                    Ok((
                        Some(Tensor::from_vec(dx, x_shape.clone(), device)?),
                        Some(Tensor::from_vec(dgain, width, device)?),
                        Some(Tensor::from_vec(dshift, width, device)?),
                    ))
                })
            })
        })
    }
}
