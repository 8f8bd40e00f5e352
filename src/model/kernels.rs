//! The thin matrix products an LSTM step runs, on weights packed once per sequence.
//!
//! Per time step the recurrence multiplies a few batch rows (`B`, 16-64) by the whole recurrent
//! weight matrix. A general GEMM re-packs that matrix on every call (DESIGN.md, "Measured
//! pitfalls"), about a quarter of its time at this shape. Here the weights are copied once per
//! sequence into [`Panels`]: 32 columns at a time, each panel contiguous, so a step streams
//! them in order. The product keeps a tile of `R` rows x 32 columns in registers and, per step
//! of the shared dimension, loads 32 weights and `R` broadcast values for `2 R` fused multiply-
//! adds (AVX-512: R = 8, 16 accumulators; AVX2: R = 2, 8 accumulators). The instruction set is
//! chosen at run time; other machines run a portable loop.

use rayon::prelude::*;

use super::gates::{PORTABLE_FUSED, madd};
use super::isa::Isa;
use super::tiling::{TILE_ROWS, tiled_len};

pub const PANEL: usize = 32;

/// A `K x N` operand stored as `ceil(N / 32)` panels of `K x 32`, zero beyond the last column.
pub struct Panels {
    data: Vec<f32>,
    k: usize,
}

impl Panels {
    /// `value(panel, kk, c)` is the operand's entry at row `kk`, column `c` of `panel`. Panels
    /// are filled in parallel: training packs a megabyte-sized `W_hh` per layer and pass.
    pub fn pack(
        k: usize,
        panels: usize,
        value: impl Fn(usize, usize, usize) -> f32 + Sync,
    ) -> Panels {
        let mut data = vec![0f32; panels * k * PANEL];
        data.par_chunks_exact_mut((k * PANEL).max(1))
            .enumerate()
            .for_each(|(p, panel)| {
                for (kk, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                    for (c, slot) in row.iter_mut().enumerate() {
                        *slot = value(p, kk, c);
                    }
                }
            });
        Panels { data, k }
    }

    /// The transpose of a row-major matrix: column `c` of panel `p` is row `row_of(p, c)` of
    /// `w` (`k` values from `offset`, rows `stride` apart), or zeros for `None`. Reads each row
    /// in order, so packing a 4 MB matrix streams it once.
    pub fn pack_rows(
        k: usize,
        panels: usize,
        w: &[f32],
        (stride, offset): (usize, usize),
        row_of: impl Fn(usize, usize) -> Option<usize> + Sync,
    ) -> Panels {
        let mut data = vec![0f32; panels * k * PANEL];
        data.par_chunks_exact_mut((k * PANEL).max(1))
            .enumerate()
            .for_each(|(p, panel)| {
                for c in 0..PANEL {
                    if let Some(row) = row_of(p, c) {
                        let src = &w[row * stride + offset..][..k];
                        for (kk, &v) in src.iter().enumerate() {
                            panel[kk * PANEL + c] = v;
                        }
                    }
                }
            });
        Panels { data, k }
    }

    pub fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.k * PANEL..(p + 1) * self.k * PANEL]
    }
}

/// [`Panels`] rounded to bfloat16 (the top half of an f32): half the bytes to stream, for
/// batch-1 generation, which reads every weight once per step and waits on memory.
pub struct PanelsBf16 {
    data: Vec<u16>,
    k: usize,
}

impl PanelsBf16 {
    pub fn from_f32(panels: &Panels) -> PanelsBf16 {
        PanelsBf16 {
            data: panels
                .data
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect(),
            k: panels.k,
        }
    }

    pub fn panel(&self, p: usize) -> &[u16] {
        &self.data[p * self.k * PANEL..(p + 1) * self.k * PANEL]
    }
}

/// A dot product in eight running sums (one sum would not vectorise: float addition does not
/// reassociate).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for (lane, (x, y)) in lanes.iter_mut().zip(x.iter().zip(y)) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `y += alpha x`.
#[inline(always)]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// The bounds every panel product's unchecked accesses rely on (rows > 0).
fn check_bounds(a: usize, lda: usize, rows: usize, panel: usize, k: usize, c: usize, ldc: usize) {
    assert!(a >= (rows - 1) * lda + k, "panel product: lhs too short");
    assert!(panel >= k * PANEL, "panel product: panel too short");
    assert!(
        c >= (rows - 1) * ldc + PANEL,
        "panel product: output too short"
    );
}

/// Which implementation multiplies by a panel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Avx512,
    Avx2,
    Portable,
}

impl Kernel {
    /// The fastest one this CPU runs, within the `ECHOAI_SIMD` cap ([`super::isa`]).
    pub fn detect() -> Kernel {
        Kernel::for_isa(super::isa::chosen())
    }

    fn for_isa(isa: Isa) -> Kernel {
        match isa {
            Isa::Avx512 => Kernel::Avx512,
            Isa::Avx2 => Kernel::Avx2,
            Isa::Portable => Kernel::Portable,
        }
    }

    fn isa(self) -> Isa {
        match self {
            Kernel::Avx512 => Isa::Avx512,
            Kernel::Avx2 => Isa::Avx2,
            Kernel::Portable => Isa::Portable,
        }
    }

    /// Whether this CPU has the instructions the kernel uses.
    pub fn runs_here(self) -> bool {
        self.isa() <= Isa::of_cpu()
    }

    /// This kernel where the CPU runs it, else the portable one: the variants are public, so a
    /// caller can name one the CPU lacks, and running it would be undefined behaviour.
    pub(super) fn checked(self) -> Kernel {
        if self.runs_here() {
            self
        } else {
            Kernel::Portable
        }
    }

    /// Every kernel this CPU can run (for tests).
    pub fn available() -> Vec<Kernel> {
        Isa::available().into_iter().map(Kernel::for_isa).collect()
    }

    /// `c[r * ldc + j] = sum_kk a[r * lda + kk] * panel[kk * 32 + j]` for `r < rows`, `j < 32`.
    #[allow(clippy::too_many_arguments)]
    pub fn panel_product(
        self,
        a: &[f32],
        lda: usize,
        rows: usize,
        panel: &[f32],
        k: usize,
        c: &mut [f32],
        ldc: usize,
    ) {
        if rows == 0 {
            return;
        }
        check_bounds(a.len(), lda, rows, panel.len(), k, c.len(), ldc);
        let (a, p, c) = (a.as_ptr(), panel.as_ptr(), c.as_mut_ptr());
        // SAFETY: `check_bounds` bounds every access the tiles make (rows < `rows`,
        // kk < `k`, columns < 32); `checked` names only a kernel this CPU supports.
        unsafe {
            match self.checked() {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => x86::rows_avx512(a, lda, rows, p, k, c, ldc),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => x86::rows_avx2(a, lda, rows, p, k, c, ldc),
                _ => rows_portable(a, lda, rows, p, k, c, ldc),
            }
        }
    }
}

/// Rows of a panel (16 KB) that all row tiles use before the next block: half of L1.
const K_BLOCK: usize = 128;

impl Kernel {
    /// `y += x`, on this kernel's instruction set: the team members' gradient sums run inside
    /// closures compiled for the baseline (SSE) otherwise.
    pub fn add_to(self, x: &[f32], y: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.checked() == Kernel::Avx512 {
            // SAFETY: AVX-512 is present (`checked`); the body is safe code.
            unsafe { x86::add_avx512(x, y) };
            return;
        }
        axpy(1.0, x, y);
    }

    /// Whether [`Kernel::panel_product_tiled`] reads the tiling for `rows` rows (else `a`): a
    /// caller that builds the tiling only for it can skip that work otherwise.
    pub fn reads_tiling(self, rows: usize) -> bool {
        cfg!(target_arch = "x86_64") && self.checked() == Kernel::Avx512 && rows >= 2
    }

    /// [`Kernel::panel_product`] given also the tiling of `a` ([`tiled_index`]): the AVX-512
    /// kernel reads the tiling, the others read `a`. Padding rows of the tiling must be finite
    /// (their products are computed and dropped). `stream`: the caller's panels do not stay in
    /// L2 from one call to the next, so the first tile prefetches the panel ahead of its loads
    /// (+10-15 % on the step kernel then; -10 % when the panels are L2-resident).
    #[allow(clippy::too_many_arguments)]
    pub fn panel_product_tiled(
        self,
        stream: bool,
        tiled: &[f32],
        a: &[f32],
        lda: usize,
        rows: usize,
        panel: &[f32],
        k: usize,
        c: &mut [f32],
        ldc: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.reads_tiling(rows) {
            assert!(
                tiled.len() >= tiled_len(rows, k),
                "panel product: tiling too short"
            );
            check_bounds(a.len(), lda, rows, panel.len(), k, c.len(), ldc);
            let (t, p, c) = (tiled.as_ptr(), panel.as_ptr(), c.as_mut_ptr());
            // The panel is read once, in blocks of `K_BLOCK` rows that every tile uses while the
            // block is in L1 (the tiles keep their sums in `c` between blocks), not once per
            // tile from L2 or L3.
            let block = K_BLOCK;
            for start in (0..k).step_by(block) {
                let len = block.min(k - start);
                for tile in 0..rows.div_ceil(TILE_ROWS) {
                    let valid = (rows - tile * TILE_ROWS).min(TILE_ROWS);
                    // SAFETY: asserted above (`check_bounds` and the tiling's length): the tiling
                    // holds every tile's k x 8 values, the panel k x 32, the output `valid` rows
                    // of 32 from row 8 * tile; rows start .. start + len < k of each are read, and
                    // prefetches stay within the panel; AVX-512 is present.
                    unsafe {
                        x86::tile512_tiled(
                            t.add(tile * TILE_ROWS * k + start * TILE_ROWS),
                            p.add(start * PANEL),
                            len,
                            c.add(tile * TILE_ROWS * ldc),
                            ldc,
                            valid,
                            x86::Pass {
                                accumulate: start > 0,
                                prefetch: stream && tile == 0,
                            },
                        )
                    };
                }
            }
            return;
        }
        self.panel_product(a, lda, rows, panel, k, c, ldc);
    }

    /// [`Kernel::panel_product`] with bfloat16 weights (widened to f32 exactly; f32 sums).
    #[allow(clippy::too_many_arguments)]
    pub fn panel_product_bf16(
        self,
        a: &[f32],
        lda: usize,
        rows: usize,
        panel: &[u16],
        k: usize,
        c: &mut [f32],
        ldc: usize,
    ) {
        if rows == 0 {
            return;
        }
        check_bounds(a.len(), lda, rows, panel.len(), k, c.len(), ldc);
        #[cfg(target_arch = "x86_64")]
        if self.checked() == Kernel::Avx512 {
            // SAFETY: bounds checked above; `checked` names AVX-512 only where present.
            unsafe {
                for r in 0..rows {
                    x86::row_bf16_avx512(
                        a.as_ptr().add(r * lda),
                        panel.as_ptr(),
                        k,
                        c.as_mut_ptr().add(r * ldc),
                    );
                }
            }
            return;
        }
        for r in 0..rows {
            let mut acc = [0f32; PANEL];
            for kk in 0..k {
                let av = a[r * lda + kk];
                for (j, slot) in acc.iter_mut().enumerate() {
                    let w = f32::from_bits((panel[kk * PANEL + j] as u32) << 16);
                    *slot = madd::<PORTABLE_FUSED>(w, av, *slot);
                }
            }
            c[r * ldc..r * ldc + PANEL].copy_from_slice(&acc);
        }
    }
}

/// # Safety
/// As [`Kernel::panel_product`] asserts.
unsafe fn rows_portable(
    a: *const f32,
    lda: usize,
    rows: usize,
    p: *const f32,
    k: usize,
    c: *mut f32,
    ldc: usize,
) {
    #[allow(clippy::needless_range_loop)]
    for r in 0..rows {
        let mut acc = [0f32; PANEL];
        for kk in 0..k {
            // SAFETY: r < rows and kk < k, as the caller bounds.
            let (av, w) = unsafe {
                (
                    *a.add(r * lda + kk),
                    &*(p.add(kk * PANEL) as *const [f32; PANEL]),
                )
            };
            for j in 0..PANEL {
                acc[j] = madd::<PORTABLE_FUSED>(w[j], av, acc[j]);
            }
        }
        // SAFETY: row r of the output holds 32 floats.
        unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), c.add(r * ldc), PANEL) };
    }
}

#[cfg(target_arch = "x86_64")]
// The tile loops index registers and pointer offsets with the same counters.
#[allow(clippy::needless_range_loop)]
mod x86 {
    use super::PANEL;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn add_avx512(x: &[f32], y: &mut [f32]) {
        super::axpy(1.0, x, y);
    }

    /// # Safety
    /// AVX-512F present; bounds as [`super::Kernel::panel_product`] asserts.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows_avx512(
        a: *const f32,
        lda: usize,
        rows: usize,
        p: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut r = 0;
        // SAFETY (all calls): rows r..r+R exist; the tiles stay inside the asserted bounds.
        unsafe {
            while rows - r >= 8 {
                tile512::<8>(a.add(r * lda), lda, p, k, c.add(r * ldc), ldc);
                r += 8;
            }
            if rows - r >= 4 {
                tile512::<4>(a.add(r * lda), lda, p, k, c.add(r * ldc), ldc);
                r += 4;
            }
            if rows - r >= 2 {
                tile512::<2>(a.add(r * lda), lda, p, k, c.add(r * ldc), ldc);
                r += 2;
            }
            if rows - r == 1 {
                row512(a.add(r * lda), p, k, c.add(r * ldc));
            }
        }
    }

    /// One row: a single accumulator pair would wait on each FMA's latency, so even and odd
    /// steps of `k` go to separate pairs (generation runs at batch 1).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn row512(a: *const f32, p: *const f32, k: usize, c: *mut f32) {
        // SAFETY: `row_with` asks only for the 16 values at offsets below k x 32.
        unsafe { row_with(a, k, c, |at| _mm512_loadu_ps(p.add(at))) }
    }

    /// bfloat16 weights widened to f32 by a 16-bit shift (exact), otherwise as [`row512`].
    ///
    /// # Safety
    /// AVX-512F present; `a` holds `k` floats, `p` `k x 32` bf16 values, `c` 32 floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row_bf16_avx512(a: *const f32, p: *const u16, k: usize, c: *mut f32) {
        // SAFETY: `row_with` asks only for the 16 values at offsets below k x 32.
        unsafe {
            row_with(a, k, c, |at| {
                let raw = _mm256_loadu_si256(p.add(at) as *const __m256i);
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16))
            })
        }
    }

    /// `c[0..32] = sum_kk a[kk] * panel[kk, 0..32]`, where `load(i)` gives the 16 panel values
    /// starting at flat offset `i` as f32.
    ///
    /// # Safety
    /// `a` holds `k` floats, `c` 32; `load` is valid for every offset `kk * 32 + {0, 16}`, kk < k.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn row_with(a: *const f32, k: usize, c: *mut f32, load: impl Fn(usize) -> __m512) {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut kk = 0;
        // SAFETY: kk + 1 < k inside the loop, kk < k after it.
        unsafe {
            while kk + 1 < k {
                let (a0, a1) = (_mm512_set1_ps(*a.add(kk)), _mm512_set1_ps(*a.add(kk + 1)));
                acc[0] = _mm512_fmadd_ps(a0, load(kk * PANEL), acc[0]);
                acc[1] = _mm512_fmadd_ps(a0, load(kk * PANEL + 16), acc[1]);
                acc[2] = _mm512_fmadd_ps(a1, load(kk * PANEL + 32), acc[2]);
                acc[3] = _mm512_fmadd_ps(a1, load(kk * PANEL + 48), acc[3]);
                kk += 2;
            }
            if kk < k {
                let a0 = _mm512_set1_ps(*a.add(kk));
                acc[0] = _mm512_fmadd_ps(a0, load(kk * PANEL), acc[0]);
                acc[1] = _mm512_fmadd_ps(a0, load(kk * PANEL + 16), acc[1]);
            }
            _mm512_storeu_ps(c, _mm512_add_ps(acc[0], acc[2]));
            _mm512_storeu_ps(c.add(16), _mm512_add_ps(acc[1], acc[3]));
        }
    }

    /// How [`tile512_tiled`] treats its output and the panel.
    pub struct Pass {
        /// Add to the sums already in `c` (a later block of k) instead of starting from zero.
        pub accumulate: bool,
        /// Prefetch the panel 16 rows ahead (it streams from L3).
        pub prefetch: bool,
    }

    /// An 8-row tile from its k-major tiling `t` (`t[kk * 8 + r]`); stores the first `valid`
    /// rows.
    ///
    /// # Safety
    /// AVX-512F present; `t` holds k x 8 floats, `p` k x 32, `c` `valid` rows of 32, `ldc` apart.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile512_tiled(
        t: *const f32,
        p: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
        valid: usize,
        pass: Pass,
    ) {
        const R: usize = super::TILE_ROWS;
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        if pass.accumulate {
            for r in 0..valid.min(R) {
                // SAFETY: output row r < valid holds 32 floats.
                unsafe {
                    lo[r] = _mm512_loadu_ps(c.add(r * ldc));
                    hi[r] = _mm512_loadu_ps(c.add(r * ldc + 16));
                }
            }
        }
        let prefetch = pass.prefetch;
        for kk in 0..k {
            // SAFETY: kk < k: inside the tiling and the panel.
            unsafe {
                let w0 = _mm512_loadu_ps(p.add(kk * PANEL));
                let w1 = _mm512_loadu_ps(p.add(kk * PANEL + 16));
                let at = t.add(kk * R);
                // 16 steps of kk (2 KB) ahead: about one L3 latency at this loop's speed.
                if prefetch && kk + 16 < k {
                    _mm_prefetch::<_MM_HINT_T0>(p.add((kk + 16) * PANEL) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(p.add((kk + 16) * PANEL + 16) as *const i8);
                }
                for r in 0..R {
                    let av = _mm512_set1_ps(*at.add(r));
                    lo[r] = _mm512_fmadd_ps(av, w0, lo[r]);
                    hi[r] = _mm512_fmadd_ps(av, w1, hi[r]);
                }
            }
        }
        for r in 0..valid.min(R) {
            // SAFETY: output row r < valid holds 32 floats.
            unsafe {
                _mm512_storeu_ps(c.add(r * ldc), lo[r]);
                _mm512_storeu_ps(c.add(r * ldc + 16), hi[r]);
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile512<const R: usize>(
        a: *const f32,
        lda: usize,
        p: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        for kk in 0..k {
            // SAFETY: kk < k and the panel holds k x 32 floats; rows < R exist in `a`.
            unsafe {
                let w0 = _mm512_loadu_ps(p.add(kk * PANEL));
                let w1 = _mm512_loadu_ps(p.add(kk * PANEL + 16));
                for r in 0..R {
                    let av = _mm512_set1_ps(*a.add(r * lda + kk));
                    lo[r] = _mm512_fmadd_ps(av, w0, lo[r]);
                    hi[r] = _mm512_fmadd_ps(av, w1, hi[r]);
                }
            }
        }
        for r in 0..R {
            // SAFETY: output row r holds 32 floats.
            unsafe {
                _mm512_storeu_ps(c.add(r * ldc), lo[r]);
                _mm512_storeu_ps(c.add(r * ldc + 16), hi[r]);
            }
        }
    }

    /// # Safety
    /// AVX2 and FMA present; bounds as [`super::Kernel::panel_product`] asserts.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows_avx2(
        a: *const f32,
        lda: usize,
        rows: usize,
        p: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut r = 0;
        // SAFETY (all calls): rows r..r+R exist; the tiles stay inside the asserted bounds.
        unsafe {
            while rows - r >= 2 {
                tile256::<2>(a.add(r * lda), lda, p, k, c.add(r * ldc), ldc);
                r += 2;
            }
            if rows - r == 1 {
                tile256::<1>(a.add(r * lda), lda, p, k, c.add(r * ldc), ldc);
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile256<const R: usize>(
        a: *const f32,
        lda: usize,
        p: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        for kk in 0..k {
            // SAFETY: kk < k and the panel holds k x 32 floats; rows < R exist in `a`.
            unsafe {
                let w = [
                    _mm256_loadu_ps(p.add(kk * PANEL)),
                    _mm256_loadu_ps(p.add(kk * PANEL + 8)),
                    _mm256_loadu_ps(p.add(kk * PANEL + 16)),
                    _mm256_loadu_ps(p.add(kk * PANEL + 24)),
                ];
                for r in 0..R {
                    let av = _mm256_set1_ps(*a.add(r * lda + kk));
                    for q in 0..4 {
                        acc[r][q] = _mm256_fmadd_ps(av, w[q], acc[r][q]);
                    }
                }
            }
        }
        for r in 0..R {
            for q in 0..4 {
                // SAFETY: output row r holds 32 floats.
                unsafe { _mm256_storeu_ps(c.add(r * ldc + 8 * q), acc[r][q]) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tiling::tiled_index;
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
    fn the_tiled_product_matches_a_plain_product() {
        for kernel in Kernel::available() {
            // k = 300: a streamed panel is read in blocks of K_BLOCK, the last one short.
            for (rows, k) in [1usize, 2, 7, 8, 9, 16, 19]
                .into_iter()
                .flat_map(|rows| [(rows, 37usize), (rows, 300)])
            {
                let (lda, ldc) = (k + 4, 70usize);
                let a = data(rows * lda, 3);
                let panel = data(k * PANEL, 4);
                let mut tiled = vec![0f32; tiled_len(rows, k)];
                for r in 0..rows {
                    for kk in 0..k {
                        tiled[tiled_index(r, kk, k)] = a[r * lda + kk];
                    }
                }
                for stream in [false, true] {
                    let mut out = vec![f32::NAN; rows * ldc];
                    kernel.panel_product_tiled(
                        stream, &tiled, &a, lda, rows, &panel, k, &mut out, ldc,
                    );
                    for r in 0..rows {
                        for j in 0..PANEL {
                            let want: f64 = (0..k)
                                .map(|kk| a[r * lda + kk] as f64 * panel[kk * PANEL + j] as f64)
                                .sum();
                            let got = out[r * ldc + j] as f64;
                            assert!(
                                (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                                "{kernel:?} rows {rows} ({r}, {j}): {got} vs {want}"
                            );
                        }
                        // Columns past the 32 of the panel are left alone.
                        assert!(
                            out[r * ldc + PANEL..(r + 1) * ldc]
                                .iter()
                                .all(|v| v.is_nan())
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_kernel_adds_every_value_exactly() {
        for kernel in Kernel::available() {
            for len in [0usize, 1, 15, 16, 17, 100] {
                let x = data(len, 5);
                let mut y = data(len + 3, 6);
                let want: Vec<f32> = (0..len + 3)
                    .map(|i| y[i] + if i < len { x[i] } else { 0.0 })
                    .collect();
                kernel.add_to(&x, &mut y[..len]);
                assert_eq!(y, want, "{kernel:?} len {len}");
            }
        }
    }

    #[test]
    fn every_kernel_matches_a_plain_product() {
        for kernel in Kernel::available() {
            for &(rows, k, n) in &[
                (1, 3, 5),
                (3, 17, 40),
                (7, 64, 33),
                (16, 512, 64),
                (13, 9, 96),
            ] {
                let lda = k + 3;
                let a = data(rows * lda, 1);
                let b = data(k * n, 2);
                let panels = Panels::pack(k, n.div_ceil(PANEL), |p, kk, c| {
                    let col = p * PANEL + c;
                    if col < n { b[kk * n + col] } else { 0.0 }
                });
                let ldc = n.div_ceil(PANEL) * PANEL;
                let mut out = vec![f32::NAN; rows * ldc];
                for p in 0..n.div_ceil(PANEL) {
                    kernel.panel_product(
                        &a,
                        lda,
                        rows,
                        panels.panel(p),
                        k,
                        &mut out[p * PANEL..],
                        ldc,
                    );
                }
                for r in 0..rows {
                    for col in 0..n {
                        let exact: f64 = (0..k)
                            .map(|kk| a[r * lda + kk] as f64 * b[kk * n + col] as f64)
                            .sum();
                        let got = out[r * ldc + col] as f64;
                        assert!(
                            (got - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
                            "{kernel:?} {rows}x{k}x{n} at ({r}, {col}): {got} vs {exact}"
                        );
                    }
                    for col in n..ldc {
                        assert_eq!(out[r * ldc + col], 0.0, "{kernel:?}: padding must be zero");
                    }
                }
                // bfloat16 weights: the same product with the weights rounded to 8 bits of mantissa.
                let half = PanelsBf16::from_f32(&panels);
                for p in 0..n.div_ceil(PANEL) {
                    kernel.panel_product_bf16(
                        &a,
                        lda,
                        rows,
                        half.panel(p),
                        k,
                        &mut out[p * PANEL..],
                        ldc,
                    );
                }
                for r in 0..rows {
                    for col in 0..n {
                        let rounded = |v: f32| half::bf16::from_f32(v).to_f32() as f64;
                        let exact: f64 = (0..k)
                            .map(|kk| a[r * lda + kk] as f64 * rounded(b[kk * n + col]))
                            .sum();
                        let got = out[r * ldc + col] as f64;
                        assert!(
                            (got - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
                            "{kernel:?} bf16 {rows}x{k}x{n} at ({r}, {col}): {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }
}
