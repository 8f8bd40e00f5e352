//! Transposes of tiles of up to 16 x 16 floats into a strided table: in registers where AVX-512 is
//! present, a value at a time otherwise.
//!
//! Why: the band attention transposes each head's keys (forward) and values (backward) into a
//! position-major table. A value at a time, each tile is 256 scalar stores into 16 lines; in
//! `perf annotate` that store was 12-16 % of the band kernels' samples (docs/BENCHMARKS.md,
//! issue 14, eighth pass). In registers it is 16 loads, 64 shuffles and 16 whole-line stores.

use super::gates::Simd;

/// The side of a whole tile.
pub const TILE: usize = 16;

/// `out[c * stride + r] = rows[r][c]` for every row `r` (at most [`TILE`]) and column `c` of
/// `rows` (all as long, at most [`TILE`]).
pub fn transpose_tile(simd: Simd, rows: &[&[f32]], out: &mut [f32], stride: usize) {
    let n = rows.first().map_or(0, |row| row.len());
    assert!(
        rows.len() <= TILE && n <= TILE && rows.iter().all(|row| row.len() == n),
        "transpose: {} rows of {n} values",
        rows.len()
    );
    if n == 0 {
        return;
    }
    assert!(
        out.len() >= (n - 1) * stride + rows.len(),
        "transpose: the table is too short"
    );
    #[cfg(target_arch = "x86_64")]
    if simd == Simd::Avx512 && rows.len() == TILE && n == TILE {
        let sources = std::array::from_fn(|r| rows[r].as_ptr());
        // SAFETY: sixteen rows of sixteen values, a table that holds `15 stride + 16` values
        // (asserted above); `Simd::Avx512` is named only where the CPU has AVX-512.
        unsafe { x86::transpose_avx512(&sources, out.as_mut_ptr(), stride) };
        return;
    }
    let _ = simd;
    for (r, row) in rows.iter().enumerate() {
        for (c, &value) in row.iter().enumerate() {
            out[c * stride + r] = value;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::TILE;
    use std::arch::x86_64::*;

    /// `out[c * stride + r] = rows[r][c]` for a whole 16 x 16 tile.
    ///
    /// # Safety
    /// AVX-512F present; each of `rows` holds 16 values; `out` holds `15 stride + 16`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose_avx512(rows: &[*const f32; TILE], out: *mut f32, stride: usize) {
        // SAFETY: every load is one of the 16 rows' 16 values, every store 16 values at
        // `c * stride`, c < 16, as the caller guarantees.
        unsafe {
            let pd = _mm512_castps_pd;
            let ps = _mm512_castpd_ps;
            let v: [__m512; TILE] = std::array::from_fn(|r| _mm512_loadu_ps(rows[r]));
            // Per 128-bit lane L: rows 2i, 2i + 1 interleaved, columns 4L, 4L + 1 (lo) and
            // 4L + 2, 4L + 3 (hi).
            let pairs: [__m512; TILE] = std::array::from_fn(|j| {
                let (a, b) = (v[j / 2 * 2], v[j / 2 * 2 + 1]);
                if j % 2 == 0 {
                    _mm512_unpacklo_ps(a, b)
                } else {
                    _mm512_unpackhi_ps(a, b)
                }
            });
            // quads[4g + m], lane L: column 4L + m of rows 4g .. 4g + 3.
            let quads: [__m512; TILE] = std::array::from_fn(|j| {
                let (g, m) = (j / 4, j % 4);
                // Rows 4g, 4g + 1 and rows 4g + 2, 4g + 3: their lo (m < 2) or hi pairs.
                let (first, second) = (pairs[4 * g + m / 2], pairs[4 * g + 2 + m / 2]);
                if m % 2 == 0 {
                    ps(_mm512_unpacklo_pd(pd(first), pd(second)))
                } else {
                    ps(_mm512_unpackhi_pd(pd(first), pd(second)))
                }
            });
            // halves[8h + 4s + m] (rows 8h .. 8h + 7): lanes 0 and 2 hold column m + 4s of the
            // first four rows and of the next four, lanes 1 and 3 column m + 4s + 8.
            let halves: [__m512; TILE] = std::array::from_fn(|j| {
                let (h, s, m) = (j / 8, (j / 4) % 2, j % 4);
                let (top, bottom) = (quads[8 * h + m], quads[8 * h + 4 + m]);
                if s == 0 {
                    _mm512_shuffle_f32x4::<0x88>(top, bottom)
                } else {
                    _mm512_shuffle_f32x4::<0xDD>(top, bottom)
                }
            });
            for c in 0..TILE {
                // Column c: m + 4s = c % 8 of both halves of the rows, lanes 0 and 2 (c < 8)
                // or 1 and 3.
                let (upper, lower) = (halves[c % 8], halves[8 + c % 8]);
                let column = if c < 8 {
                    _mm512_shuffle_f32x4::<0x88>(upper, lower)
                } else {
                    _mm512_shuffle_f32x4::<0xDD>(upper, lower)
                };
                _mm512_storeu_ps(out.add(c * stride), column);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_instruction_set_transposes_as_the_index_says() {
        for simd in Simd::available() {
            for (rows, n) in [(16, 16), (16, 5), (3, 16), (1, 1), (0, 0)] {
                let stride = 41;
                let values: Vec<Vec<f32>> = (0..rows)
                    .map(|r| (0..n).map(|c| (r * 100 + c) as f32).collect())
                    .collect();
                let sources: Vec<&[f32]> = values.iter().map(Vec::as_slice).collect();
                let mut out = vec![-1f32; TILE * stride];
                transpose_tile(simd, &sources, &mut out, stride);
                for (i, &got) in out.iter().enumerate() {
                    let (c, r) = (i / stride, i % stride);
                    let want = if c < n && r < rows {
                        values[r][c]
                    } else {
                        -1.0
                    };
                    assert_eq!(got, want, "{simd:?} {rows} x {n} at ({r}, {c})");
                }
            }
        }
    }
}
