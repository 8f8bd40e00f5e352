//! The row tiling that the AVX-512 step kernel reads its left operand from, and the stores that
//! build it while a team member computes its rows.

use super::kernels::Kernel;

/// Rows of a `rows x k` left operand regrouped for the AVX-512 tiles: tiles of [`TILE_ROWS`]
/// rows, each stored k-major (`[tile][kk][row]`), zeros padding the last tile. Read so, the eight
/// broadcasts of a step of `kk` are eight offsets from one pointer: from row-major rows, the
/// address arithmetic of eight strided rows took as many micro-ops as the FMAs, and the kernel ran
/// at ~65 % of the FMA peak even from L2.
pub const TILE_ROWS: usize = 8;

/// Values a [`TILE_ROWS`]-row tiling of `rows x k` holds.
pub fn tiled_len(rows: usize, k: usize) -> usize {
    rows.div_ceil(TILE_ROWS) * TILE_ROWS * k
}

/// Where entry (`r`, `kk`) of a `? x k` operand lives in its tiling.
#[inline(always)]
pub fn tiled_index(r: usize, kk: usize, k: usize) -> usize {
    (r / TILE_ROWS) * TILE_ROWS * k + kk * TILE_ROWS + r % TILE_ROWS
}

/// The part of a `? x k` tiling that holds columns `cols` of the tile containing row `r`: the
/// part a team member that owns those columns writes.
pub fn tiled_span(r: usize, cols: std::ops::Range<usize>, k: usize) -> std::ops::Range<usize> {
    let tile = (r / TILE_ROWS) * TILE_ROWS * k;
    tile + cols.start * TILE_ROWS..tile + cols.end * TILE_ROWS
}

/// Stores `rows` (at most [`TILE_ROWS`], each `n` long, the tile's rows from its first) into
/// one tile's [`tiled_span`] of `n` columns, `span.len() == n * TILE_ROWS`. The lanes of rows
/// not given are left as they are (the zero padding of a last, short tile).
///
/// Why a whole tile at once: row by row, each value is a scalar store `TILE_ROWS` floats after
/// the last (the tiling is row-interleaved), 3-4 % of a training step's samples at the bundled
/// size; eight rows at once transpose in registers, sixteen columns at a time.
pub fn store_tile(kernel: Kernel, span: &mut [f32], rows: &[&[f32]]) {
    let n = span.len() / TILE_ROWS;
    assert!(
        rows.len() <= TILE_ROWS && span.len() == n * TILE_ROWS && rows.iter().all(|r| r.len() == n),
        "tile store: {} rows for a span of {} values",
        rows.len(),
        span.len()
    );
    #[cfg(target_arch = "x86_64")]
    if kernel.checked() == Kernel::Avx512 && rows.len() == TILE_ROWS {
        let sources = std::array::from_fn(|r| rows[r].as_ptr());
        // SAFETY: asserted above: eight rows of `n` values and a span of `8 n`; AVX-512 is
        // present (`checked`).
        unsafe { x86::store_tile_avx512(span.as_mut_ptr(), &sources, n) };
        return;
    }
    let _ = kernel;
    for (lane, row) in rows.iter().enumerate() {
        for (slot, &v) in span.chunks_exact_mut(TILE_ROWS).zip(row.iter()) {
            slot[lane] = v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::TILE_ROWS;
    use std::arch::x86_64::*;

    /// Eight rows of `n` values into their interleaving: `out[c * 8 + r] = rows[r][c]`.
    ///
    /// # Safety
    /// AVX-512F present; each of `rows` holds `n` values and `out` holds `8 n`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn store_tile_avx512(out: *mut f32, rows: &[*const f32; TILE_ROWS], n: usize) {
        let whole = n / 16 * 16;
        for c in (0..whole).step_by(16) {
            // SAFETY: c + 16 <= n: within every row and, times eight, within `out`.
            unsafe {
                let v = |r: usize| _mm512_loadu_ps(rows[r].add(c));
                // Per 128-bit lane L, columns 4L .. 4L + 3 of the rows.
                let pairs = |a: usize| {
                    let (x, y) = (v(a), v(a + 1));
                    (_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y))
                };
                let quads = |a: usize| {
                    let ((lo0, hi0), (lo1, hi1)) = (pairs(a), pairs(a + 2));
                    let pd = _mm512_castps_pd;
                    let ps = _mm512_castpd_ps;
                    // Lane L of column m: column 4L + m of rows a .. a + 3.
                    [
                        ps(_mm512_unpacklo_pd(pd(lo0), pd(lo1))),
                        ps(_mm512_unpackhi_pd(pd(lo0), pd(lo1))),
                        ps(_mm512_unpacklo_pd(pd(hi0), pd(hi1))),
                        ps(_mm512_unpackhi_pd(pd(hi0), pd(hi1))),
                    ]
                };
                let (top, bottom) = (quads(0), quads(4));
                for m in [0, 2] {
                    // Lanes 0, 1 (then 2, 3) of rows 0-3 beside the same lanes of rows 4-7, for
                    // columns 4L + m and 4L + m + 1.
                    let low = [m, m + 1].map(|i| _mm512_shuffle_f32x4::<0x44>(top[i], bottom[i]));
                    let high = [m, m + 1].map(|i| _mm512_shuffle_f32x4::<0xEE>(top[i], bottom[i]));
                    // Output vector j holds columns 2j and 2j + 1 (eight rows each), j = 2L + m/2.
                    let at = |lane: usize| out.add((c + 4 * lane + m) * TILE_ROWS);
                    _mm512_storeu_ps(at(0), _mm512_shuffle_f32x4::<0x88>(low[0], low[1]));
                    _mm512_storeu_ps(at(1), _mm512_shuffle_f32x4::<0xDD>(low[0], low[1]));
                    _mm512_storeu_ps(at(2), _mm512_shuffle_f32x4::<0x88>(high[0], high[1]));
                    _mm512_storeu_ps(at(3), _mm512_shuffle_f32x4::<0xDD>(high[0], high[1]));
                }
            }
        }
        for c in whole..n {
            for (r, row) in rows.iter().enumerate() {
                // SAFETY: c < n, r < 8.
                unsafe { *out.add(c * TILE_ROWS + r) = *row.add(c) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_stores_a_tile_as_the_index_says() {
        for kernel in Kernel::available() {
            for rows in [1usize, 3, 8] {
                for n in [1usize, 15, 16, 37, 128] {
                    let (first, k, cols) = (8, n + 40, 20..20 + n);
                    let values: Vec<Vec<f32>> = (0..rows)
                        .map(|r| (0..n).map(|c| (r * 1000 + c) as f32).collect())
                        .collect();
                    let mut tiling = vec![-1f32; tiled_len(first + TILE_ROWS, k)];
                    let span = tiled_span(first, cols.clone(), k);
                    let sources: Vec<&[f32]> = values.iter().map(Vec::as_slice).collect();
                    store_tile(kernel, &mut tiling[span], &sources);
                    for r in 0..TILE_ROWS {
                        for kk in 0..k {
                            let got = tiling[tiled_index(first + r, kk, k)];
                            let want = if r < rows && cols.contains(&kk) {
                                values[r][kk - cols.start]
                            } else {
                                -1.0
                            };
                            assert_eq!(got, want, "{kernel:?} rows {rows} n {n} ({r}, {kk})");
                        }
                    }
                    assert!(tiling[..tiled_len(first, k)].iter().all(|&v| v == -1.0));
                }
            }
        }
    }
}
