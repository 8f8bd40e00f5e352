//! The output layer and the mean cross-entropy of the next event as one candle custom op
//! (CPU, f32; CUDA in `cuda_output_loss.rs`), with a hand-written backward pass.
//!
//! Why: through candle's ops, `Linear` then `cross_entropy` cost ~70 ms of backward pass on a
//! reference batch (16 x 256 events, 390 classes) for ~17 ms of matrix products: the log-softmax
//! is a chain of broadcast element-wise ops, each with its own allocation and backward. Here the
//! forward is one GEMM and one pass per row (max, `exp`, sum) that keeps the probabilities; the
//! backward is `(p - onehot) / N` in place and two GEMMs.
//!
//! Inputs: `h [N, H]`, `wb [V, H + 1]` = the output weight with the bias as its last column,
//! `targets [N]` (u32). Output: the mean negative log-likelihood, a scalar.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu_values::{poisoned, storage_values, take_saved, with_values};
use super::gates::Simd;
use super::matmul::matmul;

pub struct OutputLossOp {
    keep_for_backward: bool,
    simd: Simd,
    /// Softmax probabilities `[N, V]` from the forward pass.
    probabilities: Mutex<Option<Vec<f32>>>,
    #[cfg(feature = "cuda")]
    saved_cuda: Mutex<Option<super::cuda_output_loss::CudaSaved>>,
}

impl OutputLossOp {
    pub fn new(keep_for_backward: bool) -> Self {
        OutputLossOp {
            keep_for_backward,
            simd: Simd::detect(),
            probabilities: Mutex::new(None),
            #[cfg(feature = "cuda")]
            saved_cuda: Mutex::new(None),
        }
    }
}

/// `(N, H, V)` after checking the shapes fit.
fn dims(h: &Shape, wb: &Shape, targets: &Shape) -> Result<(usize, usize, usize)> {
    let (n, hidden) = h.dims2()?;
    let (vocab, width) = wb.dims2()?;
    if width != hidden + 1 || targets.dims1()? != n || n == 0 {
        bail!("output loss: shapes {h:?} {wb:?} {targets:?} do not fit together")
    }
    Ok((n, hidden, vocab))
}

#[cfg(feature = "cuda")]
fn cuda_sizes((n, hidden, vocab): (usize, usize, usize)) -> super::cuda_output_loss::Sizes {
    super::cuda_output_loss::Sizes { n, hidden, vocab }
}

impl CustomOp3 for OutputLossOp {
    fn name(&self) -> &'static str {
        "output-cross-entropy"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let sizes = cuda_sizes(dims(l1.shape(), l2.shape(), l3.shape())?);
        let (loss, saved) = super::cuda_output_loss::forward((s1, l1), (s2, l2), (s3, l3), sizes)?;
        if self.keep_for_backward {
            *self
                .saved_cuda
                .lock()
                .map_err(|_| poisoned("output loss"))? = Some(saved);
        }
        Ok((loss, Shape::from(())))
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
        let (n, hidden, vocab) = dims(l1.shape(), l2.shape(), l3.shape())?;
        let h = storage_values::<f32>(s1, l1, "output loss: h")?;
        let wb = storage_values::<f32>(s2, l2, "output loss: weights")?;
        let targets = storage_values::<u32>(s3, l3, "output loss: targets")?;
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
            bail!("output loss: target {bad} is outside the vocabulary of {vocab}")
        }
        let width = hidden + 1;
        // logits = h W^T + b: W^T[k, v] = wb[v * width + k].
        // Written in full by a GEMM that does not read its destination.
        let mut probs = super::scratch::take(n * vocab);
        matmul(
            (n, vocab, hidden),
            &mut probs,
            vocab,
            h,
            (hidden, 1),
            wb,
            (1, width),
        );
        let simd = self.simd;
        // The bias is the last column of wb: gathered once, not once per row.
        let bias: Vec<f32> = (0..vocab).map(|v| wb[v * width + hidden]).collect();
        // Row losses summed in row order (rayon's own reduction tree depends on scheduling).
        let row_losses: Vec<f64> = probs
            .par_chunks_mut(vocab)
            .zip(targets.par_iter())
            .map(|(row, &target)| {
                for (logit, b) in row.iter_mut().zip(&bias) {
                    *logit += b;
                }
                let target_logit = row[target as usize];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum = simd.exp_shifted(row, max);
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|p| *p *= inv);
                // -log softmax(target) = log sum e^(l - max) + max - l_target
                (sum.ln() + max - target_logit) as f64
            })
            .collect();
        let total: f64 = row_losses.iter().sum();
        if self.keep_for_backward {
            *self
                .probabilities
                .lock()
                .map_err(|_| poisoned("output loss"))? = Some(probs);
        } else {
            super::scratch::give(probs);
        }
        Ok((
            CpuStorage::F32(vec![(total / n as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        h: &Tensor,
        wb: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, hidden, vocab) = dims(h.shape(), wb.shape(), targets.shape())?;
        #[cfg(feature = "cuda")]
        if h.device().is_cuda() {
            let saved = take_saved(&self.saved_cuda, "output loss")?;
            let sizes = cuda_sizes((n, hidden, vocab));
            let (dh, dwb) =
                super::cuda_output_loss::backward([h, wb, targets, grad_res], saved, sizes)?;
            return Ok((Some(dh), Some(dwb), None));
        }
        let mut dlogits = take_saved(&self.probabilities, "output loss")?;
        let width = hidden + 1;
        let scale = grad_res
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()?
            / n as f32;
        let targets = targets.to_vec1::<u32>()?;
        dlogits
            .par_chunks_mut(vocab)
            .zip(targets.par_iter())
            .for_each(|(row, &target)| {
                row[target as usize] -= 1.0;
                row.iter_mut().for_each(|g| *g *= scale);
            });
        // dh = dlogits W: W[v, k] = wb[v * width + k].
        let mut dh = vec![0f32; n * hidden];
        with_values(wb, |wb: &[f32]| {
            let dl = (vocab, 1);
            matmul(
                (n, hidden, vocab),
                &mut dh,
                hidden,
                &dlogits,
                dl,
                wb,
                (width, 1),
            );
            Ok(())
        })?;
        // [dW | db] = dlogits^T [h | 1].
        let mut dwb = vec![0f32; vocab * width];
        with_values(h, |h: &[f32]| {
            let dl = (1, vocab);
            matmul(
                (vocab, hidden, n),
                &mut dwb,
                width,
                &dlogits,
                dl,
                h,
                (hidden, 1),
            );
            Ok(())
        })?;
        let ones = vec![1f32; n];
        let mut db = vec![0f32; vocab];
        matmul(
            (1, vocab, n),
            &mut db,
            vocab,
            &ones,
            (n, 1),
            &dlogits,
            (vocab, 1),
        );
        for (v, g) in db.into_iter().enumerate() {
            dwb[v * width + hidden] = g;
        }
        super::scratch::give(dlogits);
        let device = h.device();
        Ok((
            Some(Tensor::from_vec(dh, (n, hidden), device)?),
            Some(Tensor::from_vec(dwb, (vocab, width), device)?),
            None,
        ))
    }
}
