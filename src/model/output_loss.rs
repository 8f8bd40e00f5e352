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
//! `targets [N]` (u32; [`IGNORED`] marks a row that is not a prediction). Output: the mean
//! negative log-likelihood over the other rows, a scalar.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu_values::{poisoned, storage_values, take_saved, with_values};
use super::gates::Simd;
use super::matmul::matmul;

/// The target of a row that is in `h` but predicts nothing (on the CPU: the final cell state
/// that ends each sequence of the fused LSTM's output, which the loss reads without a copy).
/// It adds nothing to the loss or the gradients and is not counted in the mean.
pub const IGNORED: u32 = u32::MAX;

/// Rows whose bias-gradient sums are added in one fixed block: the sums do not depend on how
/// many threads run them.
const ROW_BLOCK: usize = 64;

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
    // Rows are every dimension but the last: `[N, H]`, or the fused LSTM's `[B, T + 1, H]`
    // read without a reshape (whose gradient would be one more pass over it).
    let hidden = match h.dims() {
        [_, .., hidden] if h.rank() >= 2 => *hidden,
        _ => bail!("output loss: h must be [rows, H], got {h:?}"),
    };
    let n = h.elem_count() / hidden.max(1);
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
        let predicted = predicted_rows(targets, vocab)?;
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
                if target == IGNORED {
                    return 0.0;
                }
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
            CpuStorage::F32(vec![(total / predicted as f64) as f32]),
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
            return Ok((Some(dh.reshape(h.shape())?), Some(dwb), None));
        }
        let mut dlogits = take_saved(&self.probabilities, "output loss")?;
        let width = hidden + 1;
        let targets = targets.to_vec1::<u32>()?;
        let scale = grad_res
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()?
            / predicted_rows(&targets, vocab)? as f32;
        // dlogits = (p - onehot) * scale in place; the bias gradient (column sums) in the same
        // pass, per block of rows, then the blocks in order.
        let block_sums: Vec<Vec<f32>> = dlogits
            .par_chunks_mut(ROW_BLOCK * vocab)
            .zip(targets.par_chunks(ROW_BLOCK))
            .map(|(rows, targets)| {
                let mut sums = vec![0f32; vocab];
                for (row, &target) in rows.chunks_exact_mut(vocab).zip(targets) {
                    if target == IGNORED {
                        row.fill(0.0);
                        continue;
                    }
                    row[target as usize] -= 1.0;
                    for (g, sum) in row.iter_mut().zip(sums.iter_mut()) {
                        *g *= scale;
                        *sum += *g;
                    }
                }
                sums
            })
            .collect();
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
        for sums in &block_sums {
            for (v, g) in sums.iter().enumerate() {
                dwb[v * width + hidden] += g;
            }
        }
        super::scratch::give(dlogits);
        let device = h.device();
        Ok((
            Some(Tensor::from_vec(dh, h.shape(), device)?),
            Some(Tensor::from_vec(dwb, (vocab, width), device)?),
            None,
        ))
    }
}

/// The rows that predict a target (not [`IGNORED`]), the mean's divisor, after checking every
/// other target is in the vocabulary.
fn predicted_rows(targets: &[u32], vocab: usize) -> Result<usize> {
    let mut rows = 0;
    for &target in targets.iter().filter(|&&t| t != IGNORED) {
        if target as usize >= vocab {
            bail!("output loss: target {target} is outside the vocabulary of {vocab}")
        }
        rows += 1;
    }
    if rows == 0 {
        bail!("output loss: every row's target is ignored")
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn an_ignored_row_adds_nothing_to_the_loss_or_the_gradients() {
        let (hidden, vocab) = (5, 7);
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.71 + seed).sin()).collect()
        };
        let device = Device::Cpu;
        let wb = Var::from_vec(
            values(vocab * (hidden + 1), 0.3),
            (vocab, hidden + 1),
            &device,
        )
        .unwrap();
        let loss_and_grads = |rows: usize, targets: Vec<u32>| {
            let h = Var::from_vec(values(rows * hidden, 1.1), (rows, hidden), &device).unwrap();
            let targets = Tensor::from_vec(targets, rows, &device).unwrap();
            let loss = h
                .apply_op3(wb.as_tensor(), &targets, OutputLossOp::new(true))
                .unwrap();
            let grads = loss.backward().unwrap();
            let dh = grads.get(h.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
            let dwb = grads.get(wb.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
            (loss.to_scalar::<f32>().unwrap(), dh, dwb)
        };
        // Three rows whose middle one is ignored, against the first and last rows alone.
        let (loss, dh, dwb) = loss_and_grads(3, vec![2, IGNORED, 6]);
        let h_all = values(3 * hidden, 1.1);
        let h_kept: Vec<f32> = [&h_all[..hidden], &h_all[2 * hidden..]].concat();
        let h = Var::from_vec(h_kept, (2, hidden), &device).unwrap();
        let targets = Tensor::new(&[2u32, 6], &device).unwrap();
        let kept_loss = h
            .apply_op3(wb.as_tensor(), &targets, OutputLossOp::new(true))
            .unwrap();
        let kept_grads = kept_loss.backward().unwrap();
        let kept_dh = kept_grads
            .get(h.as_tensor())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let kept_dwb = kept_grads
            .get(wb.as_tensor())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!((loss - kept_loss.to_scalar::<f32>().unwrap()).abs() < 1e-6);
        assert_eq!(dh[1], vec![0.0; hidden]);
        for (got, want) in [&dh[0], &dh[2]].into_iter().zip(&kept_dh) {
            for (a, b) in got.iter().zip(want) {
                assert!((a - b).abs() < 1e-6, "dh {a} vs {b}");
            }
        }
        for (got, want) in dwb.iter().flatten().zip(kept_dwb.iter().flatten()) {
            assert!((got - want).abs() < 1e-6, "dwb {got} vs {want}");
        }
        // Every row ignored is an error, not a division by zero.
        let h = Tensor::zeros((1, hidden), candle_core::DType::F32, &device).unwrap();
        let targets = Tensor::new(&[IGNORED], &device).unwrap();
        assert!(
            h.apply_op3(wb.as_tensor(), &targets, OutputLossOp::new(false))
                .is_err()
        );
    }
}
