//! The fused LSTM layer ([`super::FusedLstmOp`]) on CUDA: cuBLAS products on candle's handle
//! and stream, plus pointwise kernels compiled once with NVRTC (`cuda_lstm.cu`), after
//! Appleyard et al. 2016 and lmnt-com/haste.
//!
//! Everything stays batch-major, as candle hands it over: a step's rows are strided views
//! (`ld = T * 4H` for the gates), which cuBLAS takes directly, so nothing is transposed.
//! - forward: `G = x W_ih^T` for all steps (one GEMM); per step `G_t += h_{t-1} W_hh^T`
//!   (GEMM, beta = 1) and one kernel that adds the bias, activates the gates in place (kept for
//!   backward) and writes `c_t` and `h_t`;
//! - backward: per step one kernel (gate gradients, in place, and `dc`) and one GEMM
//!   `dh_{t-1} = dG_t W_hh`; then `dW_ih`, `dW_hh`, the bias and `dx` as one GEMM each over all
//!   steps.
//!
//! All launches go to candle's single stream, whose frees are stream-ordered, so a buffer
//! dropped after its last launch is never reused before that launch runs.

use std::sync::OnceLock;

use candle_core::cuda::cudarc;
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Tensor, bail};
use cudarc::driver::{CudaSlice, PushKernelArg};

use super::cuda_util::{
    Ptr, alloc, compiled, ensure_f32, gemm, launch_for, ones, storage_ptr, tensor_ptr, wrap,
};

const SOURCE: &str = include_str!("cuda_lstm.cu");
const MODULE: &str = "echoai_lstm";

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    compiled(&PTX, SOURCE)
}

/// What backward needs from forward: the activated gates `[B, T, 4H]` and `c_1 .. c_T`
/// `[B, T, H]`. `h_1 .. h_T` are the op's own output.
pub struct CudaSaved {
    gates: CudaSlice<f32>,
    cells: CudaSlice<f32>,
}

/// The layer's sizes: batch, steps, input width, hidden units.
#[derive(Clone, Copy)]
pub struct Sizes {
    pub b: usize,
    pub t: usize,
    pub input: usize,
    pub h: usize,
}

/// `dst[r * ldd + c] = src[r * lds + c]`.
fn copy_rows(
    dev: &CudaDevice,
    (dst, ldd): (Ptr, usize),
    (src, lds): (Ptr, usize),
    rows: usize,
    cols: usize,
) -> Result<()> {
    if rows * cols == 0 {
        return Ok(());
    }
    let func = dev.get_or_load_custom_func("copy_rows", MODULE, ptx()?)?;
    let (ldd, lds, rows32, cols64) = (ldd as i64, lds as i64, rows as i32, cols as i64);
    let mut b = func.builder();
    b.arg(&dst.0)
        .arg(&ldd)
        .arg(&src.0)
        .arg(&lds)
        .arg(&rows32)
        .arg(&cols64);
    // SAFETY: the kernel's arguments match its signature in cuda_lstm.cu, in order and type.
    unsafe { b.launch(launch_for(rows * cols)) }
        .map(|_| ())
        .map_err(|e| candle_core::Error::Msg(format!("fused LSTM: copy_rows: {e}")))
}

/// The forward pass. Returns the op's output `[B, T + 1, H]` (`h_1 .. h_T`, then `c_T`) and,
/// when `keep`, what the backward pass needs.
pub fn forward(
    (x, xl): (&CudaStorage, &Layout),
    (w, wl): (&CudaStorage, &Layout),
    (extra, el): (&CudaStorage, &Layout),
    s: Sizes,
) -> Result<(CudaStorage, CudaSaved)> {
    let dev = &x.device;
    [x, w, extra].into_iter().try_for_each(ensure_f32)?;
    let Sizes { b, t, input, h } = s;
    let (x, w, extra) = (
        storage_ptr(x, xl)?,
        storage_ptr(w, wl)?,
        storage_ptr(extra, el)?,
    );
    let (four_h, ww) = (4 * h, input + h);
    let (bias, h0, c0) = (extra, extra.at(four_h), extra.at(four_h + b * h));

    let gates = alloc(dev, b * t * four_h)?;
    let cells = alloc(dev, b * t * h)?;
    let out = alloc(dev, b * (t + 1) * h)?;
    let (g, cs, o) = (
        Ptr::of(&gates, dev, 0),
        Ptr::of(&cells, dev, 0),
        Ptr::of(&out, dev, 0),
    );

    gemm(
        dev,
        (b * t, four_h, input),
        (x, input, false),
        (w, ww, true),
        0.0,
        (g, four_h),
    )?;
    let step = dev.get_or_load_custom_func("lstm_fwd_step", MODULE, ptx()?)?;
    let (ldg, ldc, ldh) = ((t * four_h) as i64, (t * h) as i64, ((t + 1) * h) as i64);
    let (b32, h32) = (b as i32, h as i32);
    for step_t in 0..t {
        let (h_prev, ld_hp) = if step_t == 0 {
            (h0, h)
        } else {
            (o.at((step_t - 1) * h), (t + 1) * h)
        };
        let (c_prev, ld_cp) = if step_t == 0 {
            (c0, h)
        } else {
            (cs.at((step_t - 1) * h), t * h)
        };
        let g_t = g.at(step_t * four_h);
        gemm(
            dev,
            (b, four_h, h),
            (h_prev, ld_hp, false),
            (w.at(input), ww, true),
            1.0,
            (g_t, t * four_h),
        )?;
        let ld_cp = ld_cp as i64;
        let (c_t, h_t) = (cs.at(step_t * h), o.at(step_t * h));
        let mut args = step.builder();
        args.arg(&g_t.0).arg(&ldg).arg(&bias.0);
        args.arg(&c_prev.0).arg(&ld_cp);
        args.arg(&c_t.0).arg(&ldc);
        args.arg(&h_t.0).arg(&ldh);
        args.arg(&b32).arg(&h32);
        // SAFETY: the arguments match `lstm_fwd_step` in cuda_lstm.cu; every row it touches lies
        // inside the buffers allocated above for these sizes.
        unsafe { args.launch(launch_for(b * h)) }
            .map_err(|e| candle_core::Error::Msg(format!("fused LSTM: forward step: {e}")))?;
    }
    copy_rows(
        dev,
        (o.at(t * h), (t + 1) * h),
        (cs.at((t - 1) * h), t * h),
        b,
        h,
    )?;
    let out = CudaStorage::wrap_cuda_slice(out, dev.clone());
    Ok((out, CudaSaved { gates, cells }))
}

/// Gradients of the op's three inputs: `dx [B, T, In]`, `dw [4H, In + H]`, `dextra`.
pub struct Grads {
    pub dx: Tensor,
    pub dw: Tensor,
    pub dextra: Tensor,
}

/// The backward pass through time; `out` is the forward's output and `grad` its gradient.
pub fn backward(tensors: [&Tensor; 5], saved: CudaSaved, s: Sizes) -> Result<Grads> {
    let [x, w, extra, out, grad] = tensors;
    let candle_core::Device::Cuda(dev) = x.device() else {
        bail!("fused LSTM: expected CUDA tensors")
    };
    let Sizes { b, t, input, h } = s;
    let (four_h, ww) = (4 * h, input + h);
    let (x, _x) = tensor_ptr(x, dev)?;
    let (w, _w) = tensor_ptr(w, dev)?;
    let (extra, _e) = tensor_ptr(extra, dev)?;
    let (o, _o) = tensor_ptr(out, dev)?;
    let (gr, _g) = tensor_ptr(grad, dev)?;
    let (h0, c0) = (extra.at(four_h), extra.at(four_h + b * h));
    let CudaSaved { gates, cells } = saved;
    let (g, cs) = (Ptr::of(&gates, dev, 0), Ptr::of(&cells, dev, 0));

    let dh_rec = dev.alloc_zeros::<f32>(b * h)?;
    let dc = alloc(dev, b * h)?;
    let (dh, dcp) = (Ptr::of(&dh_rec, dev, 0), Ptr::of(&dc, dev, 0));
    copy_rows(dev, (dcp, h), (gr.at(t * h), (t + 1) * h), b, h)?;
    let step = dev.get_or_load_custom_func("lstm_bwd_step", MODULE, ptx()?)?;
    let (ldg, ldgh, ldc) = ((t * four_h) as i64, ((t + 1) * h) as i64, (t * h) as i64);
    let (b32, h32) = (b as i32, h as i32);
    for step_t in (0..t).rev() {
        let (c_prev, ld_cp) = if step_t == 0 {
            (c0, h)
        } else {
            (cs.at((step_t - 1) * h), t * h)
        };
        let ld_cp = ld_cp as i64;
        let g_t = g.at(step_t * four_h);
        let (grad_t, c_t) = (gr.at(step_t * h), cs.at(step_t * h));
        let mut args = step.builder();
        args.arg(&g_t.0).arg(&ldg);
        args.arg(&grad_t.0).arg(&ldgh);
        args.arg(&dh.0).arg(&dcp.0);
        args.arg(&c_t.0).arg(&ldc);
        args.arg(&c_prev.0).arg(&ld_cp);
        args.arg(&b32).arg(&h32);
        // SAFETY: the arguments match `lstm_bwd_step` in cuda_lstm.cu; every row it touches lies
        // inside the saved buffers and the gradient, whose sizes the op's shapes fix.
        unsafe { args.launch(launch_for(b * h)) }
            .map_err(|e| candle_core::Error::Msg(format!("fused LSTM: backward step: {e}")))?;
        gemm(
            dev,
            (b, h, four_h),
            (g_t, t * four_h, false),
            (w.at(input), ww, false),
            0.0,
            (dh, h),
        )?;
    }

    // h_0 .. h_{T-1}, the right operand of dW_hh.
    let h_prev = alloc(dev, b * t * h)?;
    let hp = Ptr::of(&h_prev, dev, 0);
    copy_rows(dev, (hp, t * h), (h0, h), b, h)?;
    copy_rows(dev, (hp.at(h), t * h), (o, (t + 1) * h), b, (t - 1) * h)?;

    let bt = b * t;
    let dw = alloc(dev, four_h * ww)?;
    let dwp = Ptr::of(&dw, dev, 0);
    gemm(
        dev,
        (four_h, input, bt),
        (g, four_h, true),
        (x, input, false),
        0.0,
        (dwp, ww),
    )?;
    gemm(
        dev,
        (four_h, h, bt),
        (g, four_h, true),
        (hp, h, false),
        0.0,
        (dwp.at(input), ww),
    )?;

    let dextra = alloc(dev, four_h + 2 * b * h)?;
    let de = Ptr::of(&dextra, dev, 0);
    let unit = ones(dev, bt)?;
    let onesp = Ptr::of(&unit, dev, 0);
    gemm(
        dev,
        (1, four_h, bt),
        (onesp, bt, false),
        (g, four_h, false),
        0.0,
        (de, four_h),
    )?;
    copy_rows(dev, (de.at(four_h), h), (dh, h), b, h)?;
    copy_rows(dev, (de.at(four_h + b * h), h), (dcp, h), b, h)?;

    let dx = alloc(dev, bt * input)?;
    gemm(
        dev,
        (bt, input, four_h),
        (g, four_h, false),
        (w, ww, false),
        0.0,
        (Ptr::of(&dx, dev, 0), input),
    )?;

    Ok(Grads {
        dx: wrap(dx, dev, (b, t, input)),
        dw: wrap(dw, dev, (four_h, ww)),
        dextra: wrap(dextra, dev, four_h + 2 * b * h),
    })
}
