//! The two small matrix products an LSTM step runs, hand-vectorised for this shape.
//!
//! Per time step the recurrence multiplies a thin batch of states (`B` rows, 16-32 here) by the
//! whole recurrent weight matrix (`4H x H`). A general GEMM re-packs that matrix on every call
//! (DESIGN.md, "Measured pitfalls"); these kernels avoid that. Measured on the reference model
//! (`echoai bench train`), they are still slower than the `gemm` crate on this machine
//! (2,700-2,800 against 3,200-3,400 training tokens/s), so `Recurrence::Auto` uses `gemm` and
//! these stay selectable (`Recurrence::FusedBlocked`) for tuning.
//! Here each step streams the weight rows once, in a layout fixed for the whole sequence, and adds
//! every row into all batch rows (an "axpy" per weight row, which vectorises along the row); the
//! work is split across threads by output columns. AVX-512 or AVX2+FMA are chosen at run time;
//! the hot loop lives in `#[target_feature]` functions (a closure would not inherit the feature),
//! and other machines run the same loop compiled for the baseline target.

/// Columns handled by one thread per call.
fn split_columns(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

type ColsKernel = unsafe fn(&[f32], &[f32], &mut [f32], usize, usize, usize, usize, usize);

fn kernel() -> ColsKernel {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            return cols_avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return cols_avx2;
        }
    }
    cols_portable
}

/// `w` (`n x k`, row-major) transposed into `out` (`k x n`): the forward step multiplies by
/// `W_hh^T`, so it transposes `W_hh` once per sequence and then streams rows like the backward.
pub fn transpose(w: &[f32], n: usize, k: usize, out: &mut Vec<f32>) {
    out.resize(n * k, 0.0);
    for r in 0..n {
        for c in 0..k {
            out[c * n + r] = w[r * k + c];
        }
    }
}

/// `out[b, k] = sum_n d[b, n] * w[n, k]`: `d` is `b x n`, `w` is `n x k`, `out` is `b x k`.
/// `scratch` is reused between calls so the step loop does not allocate.
pub fn d_times_w(
    d: &[f32],
    w: &[f32],
    out: &mut [f32],
    scratch: &mut Vec<f32>,
    b: usize,
    n: usize,
    k: usize,
) {
    assert!(d.len() >= b * n && w.len() >= n * k && out.len() >= b * k);
    scratch.resize(b * k, 0.0);
    let cols_kernel = kernel();
    let per_task = split_columns(k).div_ceil(16) * 16;
    let blocks = &mut scratch[..b * k];
    rayon::scope(|s| {
        let mut rest = blocks;
        let mut c0 = 0;
        while c0 < k {
            let width = per_task.min(k - c0);
            let (block, tail) = std::mem::take(&mut rest).split_at_mut(b * width);
            rest = tail;
            // SAFETY: `kernel()` returned a function whose CPU features are present; the block
            // holds `b x width` accumulators for columns c0..c0+width of `b x k`.
            s.spawn(move |_| unsafe { cols_kernel(d, w, block, b, n, k, c0, width) });
            c0 += width;
        }
    });
    let mut c0 = 0;
    let mut offset = 0;
    while c0 < k {
        let width = per_task.min(k - c0);
        for j in 0..b {
            out[j * k + c0..j * k + c0 + width]
                .copy_from_slice(&scratch[offset + j * width..offset + (j + 1) * width]);
        }
        offset += b * width;
        c0 += width;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn cols_avx512(
    d: &[f32],
    w: &[f32],
    acc: &mut [f32],
    b: usize,
    n: usize,
    k: usize,
    c0: usize,
    width: usize,
) {
    cols_tiled::<16, 8>(d, w, acc, b, n, k, c0, width)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn cols_avx2(
    d: &[f32],
    w: &[f32],
    acc: &mut [f32],
    b: usize,
    n: usize,
    k: usize,
    c0: usize,
    width: usize,
) {
    cols_tiled::<8, 4>(d, w, acc, b, n, k, c0, width)
}

#[allow(clippy::too_many_arguments)]
unsafe fn cols_portable(
    d: &[f32],
    w: &[f32],
    acc: &mut [f32],
    b: usize,
    n: usize,
    k: usize,
    c0: usize,
    width: usize,
) {
    cols_tiled::<4, 4>(d, w, acc, b, n, k, c0, width)
}

/// `acc[j, c] = sum_r d[j, r] * w[r, c0 + c]` for `c < width` (`acc` is `b x width`).
///
/// A register tile of `R` batch rows by `2 L` columns accumulates over every weight row: per
/// weight row it loads two vectors of weights and `R` scalars of `d`, and issues `2 R` fused
/// multiply-adds, so the loop runs on arithmetic rather than on loads and stores.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn cols_tiled<const L: usize, const R: usize>(
    d: &[f32],
    w: &[f32],
    acc: &mut [f32],
    b: usize,
    n: usize,
    k: usize,
    c0: usize,
    width: usize,
) {
    let strip = 2 * L;
    let mut s0 = 0;
    while s0 < width {
        let sw = strip.min(width - s0);
        let mut j0 = 0;
        while j0 < b {
            let rows = R.min(b - j0);
            let mut tile = [[[0f32; L]; 2]; R];
            if sw == strip && rows == R {
                for r in 0..n {
                    let base = r * k + c0 + s0;
                    let w0: &[f32; L] = w[base..base + L].try_into().expect("L floats");
                    let w1: &[f32; L] = w[base + L..base + strip].try_into().expect("L floats");
                    for q in 0..R {
                        let dq = d[(j0 + q) * n + r];
                        for l in 0..L {
                            tile[q][0][l] = w0[l].mul_add(dq, tile[q][0][l]);
                            tile[q][1][l] = w1[l].mul_add(dq, tile[q][1][l]);
                        }
                    }
                }
            } else {
                // The ragged edge: the same sums, without the fixed-size tile.
                for r in 0..n {
                    let base = r * k + c0 + s0;
                    for q in 0..rows {
                        let dq = d[(j0 + q) * n + r];
                        for c in 0..sw {
                            let (half, l) = (c / L, c % L);
                            tile[q][half][l] += w[base + c] * dq;
                        }
                    }
                }
            }
            for q in 0..rows {
                let out = &mut acc[(j0 + q) * width + s0..(j0 + q) * width + s0 + sw];
                for (c, o) in out.iter_mut().enumerate() {
                    *o = tile[q][c / L][c % L];
                }
            }
            j0 += R;
        }
        s0 += strip;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed)) % 1000) as f32 / 500.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn kernels_match_plain_products() {
        for &(b, n, k) in &[
            (1, 4, 3),
            (3, 130, 17),
            (16, 256, 64),
            (5, 70, 40),
            (16, 2048, 512),
        ] {
            let h = data(b * k, 1);
            let w = data(n * k, 2);
            let d = data(b * n, 3);
            let mut scratch = Vec::new();
            let mut wt = Vec::new();
            transpose(&w, n, k, &mut wt);
            let mut fast = vec![0.0; b * n];
            d_times_w(&h, &wt, &mut fast, &mut scratch, b, k, n);
            for j in 0..b {
                for r in 0..n {
                    let exact: f64 = (0..k)
                        .map(|c| h[j * k + c] as f64 * w[r * k + c] as f64)
                        .sum();
                    assert!(
                        (fast[j * n + r] as f64 - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
                        "h w^T {b}x{n}x{k}"
                    );
                }
            }
            let mut fast = vec![0.0; b * k];
            d_times_w(&d, &w, &mut fast, &mut scratch, b, n, k);
            for j in 0..b {
                for c in 0..k {
                    let exact: f64 = (0..n)
                        .map(|r| d[j * n + r] as f64 * w[r * k + c] as f64)
                        .sum();
                    assert!(
                        (fast[j * k + c] as f64 - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
                        "d w {b}x{n}x{k}"
                    );
                }
            }
        }
    }
}
