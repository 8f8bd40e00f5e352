//! The output layer plus cross-entropy ([`super::output_loss::OutputLossOp`]) on CUDA: the
//! products in cuBLAS on candle's stream, the softmax and the gradient of the logits in
//! `output_loss.cu` (NVRTC). Through candle's ops the same loss is `Linear`, then a chain of
//! broadcast element-wise ops over the `[N, V]` logits for log-softmax and the gather, each with
//! its own buffer and backward.
//!
//! - forward: `logits = h W^T` (GEMM), then one block per row adds the bias, keeps the softmax
//!   in place and writes the row's loss; one more block averages the rows in a fixed order;
//! - backward: `(p - onehot) g / N` in place, then `dh = dlogits W`, `dW = dlogits^T h` and
//!   `db = dlogits^T 1`, one GEMM each.

use std::sync::OnceLock;

use candle_core::cuda::cudarc;
use candle_core::{CudaStorage, Layout, Result, Tensor, bail};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::cuda_util::{
    Ptr, alloc, compiled, ensure_f32, gemm, launch_error, launch_for, ones, storage_ptr,
    tensor_ptr, typed_tensor_ptr, wrap,
};

const SOURCE: &str = include_str!("output_loss.cu");
const MODULE: &str = "echoai_output_loss";
/// `ROW_THREADS` in output_loss.cu.
const ROW_THREADS: u32 = 128;

/// `blocks` blocks of `ROW_THREADS` threads.
fn blocks_of_row_threads(blocks: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    compiled(&PTX, SOURCE)
}

/// The softmax probabilities `[N, V]` the forward pass keeps for the backward pass.
pub struct CudaSaved {
    probabilities: CudaSlice<f32>,
}

/// Rows (events), hidden width and vocabulary.
#[derive(Clone, Copy)]
pub struct Sizes {
    pub n: usize,
    pub hidden: usize,
    pub vocab: usize,
}

impl Sizes {
    fn width(&self) -> usize {
        self.hidden + 1
    }

    fn rows_i32(&self) -> Result<i32> {
        i32::try_from(self.n)
            .map_err(|_| candle_core::Error::Msg(format!("output loss: {} rows", self.n)))
    }
}

/// The mean loss (a scalar) and the probabilities for backward. `h [N, H]`, `wb [V, H + 1]`,
/// `targets [N]` (u32).
pub fn forward(
    (h, hl): (&CudaStorage, &Layout),
    (wb, wl): (&CudaStorage, &Layout),
    (targets, tl): (&CudaStorage, &Layout),
    s: Sizes,
) -> Result<(CudaStorage, CudaSaved)> {
    let dev = &h.device;
    [h, wb].into_iter().try_for_each(ensure_f32)?;
    if !tl.is_contiguous() {
        bail!("output loss: expected contiguous targets on CUDA")
    }
    let tp = Ptr::of(targets.as_cuda_slice::<u32>()?, dev, tl.start_offset());
    let (hp, wp) = (storage_ptr(h, hl)?, storage_ptr(wb, wl)?);
    let Sizes { n, hidden, vocab } = s;
    let width = s.width();
    let rows = s.rows_i32()?;

    let probabilities = alloc(dev, n * vocab)?;
    let pp = Ptr::of(&probabilities, dev, 0);
    gemm(
        dev,
        (n, vocab, hidden),
        (hp, hidden, false),
        (wp, width, true),
        0.0,
        (pp, vocab),
    )?;

    let row_loss = alloc(dev, n)?;
    let lp = Ptr::of(&row_loss, dev, 0);
    let softmax = dev.get_or_load_custom_func("softmax_rows", MODULE, ptx()?)?;
    let (width64, vocab32) = (width as i64, vocab as i32);
    let mut args = softmax.builder();
    args.arg(&pp.0).arg(&wp.0).arg(&width64).arg(&tp.0);
    args.arg(&lp.0).arg(&vocab32);
    // SAFETY: the arguments match `softmax_rows` in output_loss.cu; block r touches row r of
    // the `[N, V]` buffer and entry r of `targets` and `row_loss`, all N long.
    unsafe { args.launch(blocks_of_row_threads(rows as u32)) }
        .map_err(launch_error("softmax_rows"))?;

    let loss = alloc(dev, 1)?;
    let mean = dev.get_or_load_custom_func("mean_of", MODULE, ptx()?)?;
    let (out, n64) = (Ptr::of(&loss, dev, 0), n as i64);
    let mut args = mean.builder();
    args.arg(&lp.0).arg(&n64).arg(&out.0);
    // SAFETY: `mean_of` reads the N row losses and writes the one-float `loss`.
    unsafe { args.launch(blocks_of_row_threads(1)) }.map_err(launch_error("mean_of"))?;
    Ok((
        CudaStorage::wrap_cuda_slice(loss, dev.clone()),
        CudaSaved { probabilities },
    ))
}

/// `dh [N, H]` and `dwb [V, H + 1]`. `grad` is the gradient of the mean loss (a scalar).
pub fn backward(
    [h, wb, targets, grad]: [&Tensor; 4],
    saved: CudaSaved,
    s: Sizes,
) -> Result<(Tensor, Tensor)> {
    let candle_core::Device::Cuda(dev) = h.device() else {
        bail!("output loss: expected CUDA tensors")
    };
    let Sizes { n, hidden, vocab } = s;
    let width = s.width();
    let rows = s.rows_i32()?;
    let (hp, _h) = tensor_ptr(h, dev)?;
    let (wp, _w) = tensor_ptr(wb, dev)?;
    let grad = grad.to_dtype(candle_core::DType::F32)?;
    let (gp, _g) = tensor_ptr(&grad, dev)?;
    let (tp, _t) = typed_tensor_ptr::<u32>(targets, dev)?;
    let CudaSaved { probabilities } = saved;
    let dl = Ptr::of(&probabilities, dev, 0);

    let func = dev.get_or_load_custom_func("softmax_grad", MODULE, ptx()?)?;
    let vocab32 = vocab as i32;
    let mut args = func.builder();
    args.arg(&dl.0)
        .arg(&tp.0)
        .arg(&gp.0)
        .arg(&rows)
        .arg(&vocab32);
    // SAFETY: the arguments match `softmax_grad`; it touches the N x V probabilities and the
    // N targets.
    unsafe { args.launch(launch_for(n * vocab)) }.map_err(launch_error("softmax_grad"))?;

    let dh = alloc(dev, n * hidden)?;
    gemm(
        dev,
        (n, hidden, vocab),
        (dl, vocab, false),
        (wp, width, false),
        0.0,
        (Ptr::of(&dh, dev, 0), hidden),
    )?;
    // [dW | db]: dW in the first H columns of each row, db in the last.
    let dwb = alloc(dev, vocab * width)?;
    let dwp = Ptr::of(&dwb, dev, 0);
    gemm(
        dev,
        (vocab, hidden, n),
        (dl, vocab, true),
        (hp, hidden, false),
        0.0,
        (dwp, width),
    )?;
    let unit = ones(dev, n)?;
    gemm(
        dev,
        (vocab, 1, n),
        (dl, vocab, true),
        (Ptr::of(&unit, dev, 0), 1, false),
        0.0,
        (dwp.at(hidden), width),
    )?;
    Ok((wrap(dh, dev, (n, hidden)), wrap(dwb, dev, (vocab, width))))
}
