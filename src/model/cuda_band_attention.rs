//! [`super::band_attention::BandAttentionOp`] on CUDA: the same banded scores, softmax and
//! context as the CPU op, one warp per (sequence, head, position), kernels in
//! `band_attention.cu`.
//!
//! Why: candle's composed attention builds the full `T x T` scores and masks them to the band
//! (8 times the work at T = 512, W = 64), and it was 37 % of a 32 x 512 lstm-attention step
//! on an H200 (`docs/BENCHMARKS.md`). The backward pass gathers rather than scatters: one kernel
//! per query row writes its score gradients and `dq`, one per key row sums `dk` and `dv` from the
//! W query rows that saw it, so no output is written by two warps.

use std::sync::OnceLock;

use candle_core::cuda::cudarc;
use candle_core::{CudaStorage, Layout, Result, Tensor, bail};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::cuda_util::{
    Ptr, alloc, compiled, ensure_f32, launch_error, storage_ptr, tensor_ptr, wrap,
};

const SOURCE: &str = include_str!("band_attention.cu");
const MODULE: &str = "echoai_band_attention";

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    compiled(&PTX, SOURCE)
}

/// Batch, steps, hidden width, heads and window.
#[derive(Clone, Copy)]
pub struct Sizes {
    pub b: usize,
    pub t: usize,
    pub hidden: usize,
    pub heads: usize,
    pub window: usize,
}

impl Sizes {
    fn rows(&self) -> usize {
        self.b * self.heads * self.t
    }

    /// One warp per row, with the row's W scores in shared memory.
    fn per_row(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.rows() as u32, 1, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes: (4 * self.window) as u32,
        }
    }

    fn scale(&self) -> f32 {
        1.0 / ((self.hidden / self.heads) as f32).sqrt()
    }

    fn ints(&self) -> [i32; 4] {
        [self.t, self.hidden, self.heads, self.window].map(|v| v as i32)
    }
}

/// The context `[B, T, H]` and the probabilities `[B, heads, T, W]` (kept for backward).
pub fn forward(
    (qkv, ql): (&CudaStorage, &Layout),
    (bias, bl): (&CudaStorage, &Layout),
    s: Sizes,
) -> Result<(CudaStorage, CudaSlice<f32>)> {
    let dev = &qkv.device;
    [qkv, bias].into_iter().try_for_each(ensure_f32)?;
    let (qkv, bias) = (storage_ptr(qkv, ql)?, storage_ptr(bias, bl)?);
    let context = alloc(dev, s.b * s.t * s.hidden)?;
    let probs = alloc(dev, s.rows() * s.window)?;
    let (ctx, pr) = (Ptr::of(&context, dev, 0), Ptr::of(&probs, dev, 0));
    let func = dev.get_or_load_custom_func("band_attn_fwd", MODULE, ptx()?)?;
    let [t, hidden, heads, window] = s.ints();
    let scale = s.scale();
    let mut args = func.builder();
    args.arg(&qkv.0).arg(&bias.0).arg(&ctx.0).arg(&pr.0);
    args.arg(&t)
        .arg(&hidden)
        .arg(&heads)
        .arg(&window)
        .arg(&scale);
    // SAFETY: the arguments match `band_attn_fwd`; the grid covers exactly the rows of the
    // buffers allocated above for these sizes, and shared memory holds one row's W scores.
    unsafe { args.launch(s.per_row()) }.map_err(launch_error("band_attn_fwd"))?;
    Ok((CudaStorage::wrap_cuda_slice(context, dev.clone()), probs))
}

/// `(dqkv [B, T, 3H], drel_bias [heads, W])` from the context's gradient.
pub fn backward(
    qkv: &Tensor,
    grad: &Tensor,
    probs: CudaSlice<f32>,
    s: Sizes,
) -> Result<(Tensor, Tensor)> {
    let candle_core::Device::Cuda(dev) = qkv.device() else {
        bail!("band attention: expected CUDA tensors")
    };
    let (q, _q) = tensor_ptr(qkv, dev)?;
    let (g, _g) = tensor_ptr(grad, dev)?;
    let pr = Ptr::of(&probs, dev, 0);
    let dscores = alloc(dev, s.rows() * s.window)?;
    let dqkv = alloc(dev, s.b * s.t * 3 * s.hidden)?;
    let dbias = dev.alloc_zeros::<f32>(s.heads * s.window)?;
    let (ds, dq, db) = (
        Ptr::of(&dscores, dev, 0),
        Ptr::of(&dqkv, dev, 0),
        Ptr::of(&dbias, dev, 0),
    );
    let [t, hidden, heads, window] = s.ints();
    let scale = s.scale();
    for name in ["band_attn_bwd_query", "band_attn_bwd_key"] {
        let func = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
        let mut args = func.builder();
        args.arg(&q.0).arg(&g.0).arg(&pr.0).arg(&ds.0).arg(&dq.0);
        args.arg(&t)
            .arg(&hidden)
            .arg(&heads)
            .arg(&window)
            .arg(&scale);
        // SAFETY: both kernels take these arguments in this order; the query pass writes the
        // score gradients the key pass reads (same stream, in order), and each writes only its
        // own rows of `dqkv`.
        unsafe { args.launch(s.per_row()) }.map_err(launch_error(name))?;
    }
    let slices = 64usize.min(s.b * s.t).max(1);
    let rows_per_slice = (s.b * s.t).div_ceil(slices) as i32;
    let bias_cells = s.heads * s.window;
    let func = dev.get_or_load_custom_func("band_attn_bias_grad", MODULE, ptx()?)?;
    let b = s.b as i32;
    let mut args = func.builder();
    args.arg(&ds.0)
        .arg(&db.0)
        .arg(&b)
        .arg(&t)
        .arg(&heads)
        .arg(&window)
        .arg(&rows_per_slice);
    let config = LaunchConfig {
        grid_dim: (bias_cells.div_ceil(128) as u32, slices as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: `band_attn_bias_grad`'s arguments in order; threads past `heads * W` return.
    unsafe { args.launch(config) }.map_err(launch_error("band_attn_bias_grad"))?;
    Ok((
        wrap(dqkv, dev, (s.b, s.t, 3 * s.hidden)),
        wrap(dbias, dev, (s.heads, s.window)),
    ))
}
