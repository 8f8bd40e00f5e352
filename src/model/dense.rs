//! A linear layer `y = x W^T + b` over the rows of `x` as one candle custom op (CPU, f32), with a
//! hand-written backward pass: three GEMMs on the `gemm` crate and one pass of column sums.
//!
//! Why: candle_nn's `Linear` is a matmul on a transposed weight and a broadcast add. Its backward
//! pass sums the bias gradient with candle's reduction over leading dimensions (21 ms for one
//! `[16, 256, 768]` tensor on two cores, where the pass reads 12 MB), and the products went at
//! about a third of the GEMM ceiling: the attention's `qkv` layer took 95 ms forward and backward
//! at the bundled size for 4.8 GFLOP (docs/BENCHMARKS.md, issue 14 sixth pass).

use candle_core::{CpuStorage, CustomOp3, Layout, Module, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu_values::{storage_values, with_values};
use super::matmul::matmul;
use super::team::column_parts;

pub(super) struct DenseOp;

/// `x [.., In]` through `linear` (weight `[Out, In]`, bias `[Out]`) to `[.., Out]`: on the CPU in
/// f32 as [`DenseOp`], elsewhere as candle_nn's own forward.
pub fn dense(x: &Tensor, linear: &candle_nn::Linear) -> Result<Tensor> {
    let Some(bias) = linear.bias() else {
        return linear.forward(x);
    };
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 || x.rank() == 0 {
        return linear.forward(x);
    }
    // The op takes `x` with its leading dimensions as they are: a reshape on either side is a
    // graph node whose backward pass costs a zeroed tensor and an add of the gradient's size.
    x.contiguous()?
        .apply_op3(&linear.weight().contiguous()?, &bias.contiguous()?, DenseOp)
}

/// `(rows, In, Out)` of `x [.., In]`, `w [Out, In]`, `b [Out]`.
fn sizes(x: &Shape, w: &Shape, b: &Shape) -> Result<(usize, usize, usize)> {
    let input = x.dims().last().copied().unwrap_or(0);
    let (out, w_input) = w.dims2()?;
    if x.rank() == 0 || w_input != input || b.dims1()? != out {
        bail!("dense: shapes {x:?} {w:?} {b:?} do not fit together")
    }
    Ok((x.elem_count() / input.max(1), input, out))
}

/// `x`'s shape with the last dimension `last`.
fn with_last(x: &Shape, last: usize) -> Shape {
    let mut dims = x.dims().to_vec();
    if let Some(end) = dims.last_mut() {
        *end = last;
    }
    Shape::from(dims)
}

impl CustomOp3 for DenseOp {
    fn name(&self) -> &'static str {
        "dense"
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
        let (rows, input, out) = sizes(l1.shape(), l2.shape(), l3.shape())?;
        let x = storage_values::<f32>(s1, l1, "dense: x")?;
        let w = storage_values::<f32>(s2, l2, "dense: weight")?;
        let bias = storage_values::<f32>(s3, l3, "dense: bias")?;
        let mut y = vec![0f32; rows * out];
        // x W^T[k, n] = w[n * In + k]; as candle's matmul then add: the product first, the bias
        // after.
        matmul(
            (rows, out, input),
            &mut y,
            out,
            x,
            (input, 1),
            w,
            (1, input),
        );
        y.par_chunks_mut(out.max(1)).for_each(|row| {
            for (value, b) in row.iter_mut().zip(bias) {
                *value += b;
            }
        });
        Ok((CpuStorage::F32(y), with_last(l1.shape(), out)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, input, out) = sizes(x.shape(), w.shape(), b.shape())?;
        let device = x.device();
        let x_shape = x.shape();
        with_values(dy, |dy: &[f32]| {
            with_values(x, |x: &[f32]| {
                with_values(w, |w: &[f32]| {
                    // dx = dy W; dW = dy^T x; db = the column sums of dy.
                    let mut dx = vec![0f32; rows * input];
                    matmul(
                        (rows, input, out),
                        &mut dx,
                        input,
                        dy,
                        (out, 1),
                        w,
                        (input, 1),
                    );
                    let mut dw = vec![0f32; out * input];
                    matmul(
                        (out, input, rows),
                        &mut dw,
                        input,
                        dy,
                        (1, out),
                        x,
                        (input, 1),
                    );
                    let db = column_sums(dy, out);
                    Ok((
                        Some(Tensor::from_vec(dx, x_shape.clone(), device)?),
                        Some(Tensor::from_vec(dw, (out, input), device)?),
                        Some(Tensor::from_vec(db, out, device)?),
                    ))
                })
            })
        })
    }
}

/// The sums of the columns of `values [rows, cols]`, each over the rows in order.
fn column_sums(values: &[f32], cols: usize) -> Vec<f32> {
    let parts: Vec<Vec<f32>> = column_parts(cols)
        .into_par_iter()
        .map(|part| {
            let mut sums = vec![0f32; part.len()];
            for row in values.chunks_exact(cols) {
                for (sum, v) in sums.iter_mut().zip(&row[part.clone()]) {
                    *sum += v;
                }
            }
            sums
        })
        .collect();
    parts.concat()
}
