//! One LSTM layer's whole recurrence as a single candle custom op, with a hand-written backward
//! pass through time (CPU, f32).
//!
//! Why: candle's autograd of a per-step `narrow` builds a zero-padded gradient as large as the
//! whole sequence for every step, so a composed LSTM costs O(T^2) memory traffic in training
//! (DESIGN.md, "Measured pitfalls"). Here the forward runs, per step, one GEMM `h_{t-1} W_hh^T`
//! plus one pass over the gates, and stores the activations; the backward runs, per step, one pass
//! of gate derivatives and one GEMM for `dh_{t-1}`, then `dW_hh` as one large GEMM over all steps.
//! The input projection `x W_ih^T + b` stays outside (one matmul, differentiated by autograd).
//!
//! Inputs: `xproj [B, T, 4H]` (gate order i, f, g, o as PyTorch), `w_hh [4H, H]`,
//! `state0 [2, B, H]` (h0 then c0). Output `[B, T + 1, H]`: `h_1 .. h_T`, then the final cell
//! state `c_T` in the last row.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use gemm::Parallelism;
use rayon::prelude::*;

/// What the backward pass needs from the forward pass.
struct Saved {
    /// Post-activation gates i, f, g, o: `[T, B, 4H]`.
    gates: Vec<f32>,
    /// Cell states `c_0 .. c_T` (index 0 is the initial state): `[T + 1, B, H]`.
    cells: Vec<f32>,
    /// `h_{t-1}` for every (b, t): `[B, T, H]`, the right operand of the `dW_hh` GEMM.
    h_prev: Vec<f32>,
}

/// Which routine multiplies by `W_hh` in the step loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepProduct {
    /// The hand-vectorised kernels of [`super::kernels`] (no re-packing of `W_hh`).
    Blocked,
    /// The general `gemm` crate (kept for comparison).
    Gemm,
}

pub struct FusedLstmOp {
    keep_for_backward: bool,
    product: StepProduct,
    saved: Mutex<Option<Saved>>,
}

impl FusedLstmOp {
    /// `keep_for_backward`: store activations (training); inference skips that memory.
    pub fn new(keep_for_backward: bool, product: StepProduct) -> Self {
        FusedLstmOp {
            keep_for_backward,
            product,
            saved: Mutex::new(None),
        }
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("fused LSTM: {what} must be f32")
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("fused LSTM: {what} must be contiguous")
    };
    Ok(&v[start..end])
}

fn parallelism(flops: usize) -> Parallelism {
    if flops >= 1 << 20 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// `dst[m, n] (+)= lhs[m, k] * rhs[k, n]` with explicit (row, column) strides for each operand.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    debug_assert!(dst.len() >= m * n);
    debug_assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    debug_assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the debug assertions above state the bounds every call site guarantees by
    // construction: dst holds m x n row-major, lhs and rhs hold the strided m x k and k x n views.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism(2 * m * n * k),
        )
    }
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl CustomOp3 for FusedLstmOp {
    fn name(&self) -> &'static str {
        "fused-lstm"
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
        let (b, t_len, four_h) = l1.shape().dims3()?;
        let h = four_h / 4;
        if l2.shape().dims2()? != (four_h, h) || l3.shape().dims3()? != (2, b, h) {
            bail!(
                "fused LSTM: shapes {:?} {:?} {:?} do not fit together",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let xproj = f32_slice(s1, l1, "xproj")?;
        let w_hh = f32_slice(s2, l2, "w_hh")?;
        let state0 = f32_slice(s3, l3, "state0")?;

        let mut h_cur = state0[..b * h].to_vec();
        let mut c_cur = state0[b * h..].to_vec();
        let mut pre = vec![0f32; b * four_h];
        let mut out = vec![0f32; b * (t_len + 1) * h];
        let keep = self.keep_for_backward;
        let mut gates_all = if keep {
            vec![0f32; t_len * b * four_h]
        } else {
            Vec::new()
        };
        let mut cells = if keep {
            vec![0f32; (t_len + 1) * b * h]
        } else {
            Vec::new()
        };
        let mut h_prev = if keep {
            vec![0f32; b * t_len * h]
        } else {
            Vec::new()
        };
        if keep {
            cells[..b * h].copy_from_slice(&c_cur);
        }
        let mut scratch = vec![0f32; b * four_h];
        let mut product_scratch = Vec::with_capacity(b * four_h);
        let mut w_hh_t = Vec::new();
        if self.product == StepProduct::Blocked {
            super::kernels::transpose(w_hh, four_h, h, &mut w_hh_t);
        }

        for t in 0..t_len {
            if keep {
                for bi in 0..b {
                    let row = (bi * t_len + t) * h;
                    h_prev[row..row + h].copy_from_slice(&h_cur[bi * h..(bi + 1) * h]);
                }
            }
            // pre = h_{t-1} W_hh^T: W_hh is [4H, H] row-major, so W_hh^T[k, n] = w_hh[n * H + k].
            match self.product {
                StepProduct::Blocked => super::kernels::d_times_w(
                    &h_cur,
                    &w_hh_t,
                    &mut pre,
                    &mut product_scratch,
                    b,
                    h,
                    four_h,
                ),
                StepProduct::Gemm => {
                    matmul(b, four_h, h, &mut pre, false, &h_cur, (h, 1), w_hh, (1, h))
                }
            }
            let gates_t: &mut [f32] = if keep {
                &mut gates_all[t * b * four_h..(t + 1) * b * four_h]
            } else {
                &mut scratch
            };
            pre.par_chunks_mut(four_h)
                .zip(gates_t.par_chunks_mut(four_h))
                .zip(h_cur.par_chunks_mut(h))
                .zip(c_cur.par_chunks_mut(h))
                .enumerate()
                .for_each(|(bi, (((pre, gates), h_row), c_row))| {
                    let x = &xproj[(bi * t_len + t) * four_h..(bi * t_len + t + 1) * four_h];
                    for j in 0..h {
                        let i = sigmoid(pre[j] + x[j]);
                        let f = sigmoid(pre[h + j] + x[h + j]);
                        let g = (pre[2 * h + j] + x[2 * h + j]).tanh();
                        let o = sigmoid(pre[3 * h + j] + x[3 * h + j]);
                        // c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)
                        let c = f * c_row[j] + i * g;
                        c_row[j] = c;
                        h_row[j] = o * c.tanh();
                        gates[j] = i;
                        gates[h + j] = f;
                        gates[2 * h + j] = g;
                        gates[3 * h + j] = o;
                    }
                });
            for bi in 0..b {
                let row = (bi * (t_len + 1) + t) * h;
                out[row..row + h].copy_from_slice(&h_cur[bi * h..(bi + 1) * h]);
            }
            if keep {
                cells[(t + 1) * b * h..(t + 2) * b * h].copy_from_slice(&c_cur);
            }
        }
        for bi in 0..b {
            let row = (bi * (t_len + 1) + t_len) * h;
            out[row..row + h].copy_from_slice(&c_cur[bi * h..(bi + 1) * h]);
        }
        if keep {
            let mut saved = self
                .saved
                .lock()
                .map_err(|_| candle_core::Error::Msg("fused LSTM: poisoned lock".into()))?;
            *saved = Some(Saved {
                gates: gates_all,
                cells,
                h_prev,
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, t_len + 1, h))))
    }

    fn bwd(
        &self,
        xproj: &Tensor,
        w_hh: &Tensor,
        _state0: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("fused LSTM: poisoned lock".into()))?
            .take();
        let Some(Saved {
            gates,
            cells,
            h_prev,
        }) = saved
        else {
            bail!("fused LSTM: backward without a training forward (or run twice)")
        };
        let (b, t_len, four_h) = xproj.dims3()?;
        let h = four_h / 4;
        let device = xproj.device();
        let grad = grad_res.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let w = w_hh.contiguous()?.flatten_all()?.to_vec1::<f32>()?;

        let mut dxproj = vec![0f32; b * t_len * four_h];
        let mut dh_next = vec![0f32; b * h];
        let mut dc_next = vec![0f32; b * h];
        for bi in 0..b {
            let row = (bi * (t_len + 1) + t_len) * h;
            dc_next[bi * h..(bi + 1) * h].copy_from_slice(&grad[row..row + h]);
        }
        let mut da = vec![0f32; b * four_h];
        let mut product_scratch = Vec::with_capacity(b * h);
        for t in (0..t_len).rev() {
            let gates_t = &gates[t * b * four_h..(t + 1) * b * four_h];
            let c_t = &cells[(t + 1) * b * h..(t + 2) * b * h];
            let c_prev = &cells[t * b * h..(t + 1) * b * h];
            da.par_chunks_mut(four_h)
                .zip(dh_next.par_chunks(h))
                .zip(dc_next.par_chunks_mut(h))
                .enumerate()
                .for_each(|(bi, ((da, dh_next), dc_row))| {
                    let g_row = &gates_t[bi * four_h..(bi + 1) * four_h];
                    let dh_out = &grad[(bi * (t_len + 1) + t) * h..(bi * (t_len + 1) + t + 1) * h];
                    for j in 0..h {
                        let (i, f, g, o) =
                            (g_row[j], g_row[h + j], g_row[2 * h + j], g_row[3 * h + j]);
                        let tc = c_t[bi * h + j].tanh();
                        let dh = dh_out[j] + dh_next[j];
                        let d_o = dh * tc;
                        let dc = dc_row[j] + dh * o * (1.0 - tc * tc);
                        da[j] = dc * g * i * (1.0 - i);
                        da[h + j] = dc * c_prev[bi * h + j] * f * (1.0 - f);
                        da[2 * h + j] = dc * i * (1.0 - g * g);
                        da[3 * h + j] = d_o * o * (1.0 - o);
                        dc_row[j] = dc * f;
                    }
                });
            for bi in 0..b {
                let row = (bi * t_len + t) * four_h;
                dxproj[row..row + four_h].copy_from_slice(&da[bi * four_h..(bi + 1) * four_h]);
            }
            // dh_{t-1} = da W_hh: [B, 4H] x [4H, H].
            match self.product {
                StepProduct::Blocked => super::kernels::d_times_w(
                    &da,
                    &w,
                    &mut dh_next,
                    &mut product_scratch,
                    b,
                    four_h,
                    h,
                ),
                StepProduct::Gemm => matmul(
                    b,
                    h,
                    four_h,
                    &mut dh_next,
                    false,
                    &da,
                    (four_h, 1),
                    &w,
                    (h, 1),
                ),
            }
        }
        // dW_hh = sum over (b, t) of da^T h_{t-1}: one [4H, B*T] x [B*T, H] GEMM.
        let mut dw = vec![0f32; four_h * h];
        let rows = b * t_len;
        matmul(
            four_h,
            h,
            rows,
            &mut dw,
            false,
            &dxproj,
            (1, four_h),
            &h_prev,
            (h, 1),
        );

        let mut dstate = dh_next;
        dstate.extend_from_slice(&dc_next);
        Ok((
            Some(Tensor::from_vec(dxproj, (b, t_len, four_h), device)?),
            Some(Tensor::from_vec(dw, (four_h, h), device)?),
            Some(Tensor::from_vec(dstate, (2, b, h), device)?),
        ))
    }
}
