//! The `gemm` crate behind one call with explicit strides, for the hand-written ops.

use gemm::Parallelism;
use rayon::prelude::*;

/// The most columns a weight-gradient product has for [`matmul`] to split it by columns.
const SPLIT_COLUMNS: usize = 256;

/// The most threads [`matmul`] splits a product by columns over: measured on two.
const SPLIT_THREADS: usize = 4;

/// `dst[m, n] = lhs[m, k] * rhs[k, n]` (row stride of `dst`: `dst_rs`), operands given with
/// explicit (row, column) strides; split across the rayon pool when large.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * dst_rs + n, "matmul: dst too short");
    assert!(
        k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs,
        "matmul: lhs too short"
    );
    assert!(
        k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs,
        "matmul: rhs too short"
    );
    let parallel = 2 * m * n * k >= 1 << 20;
    let threads = rayon::current_num_threads();
    let product = Product {
        k,
        dst: dst.as_mut_ptr() as usize,
        dst_rs,
        lhs: (lhs.as_ptr() as usize, lhs_rs, lhs_cs),
        rhs: (rhs.as_ptr() as usize, rhs_rs, rhs_cs),
    };
    if parallel && (2..=SPLIT_THREADS).contains(&threads) && k >= 2 * m && n <= SPLIT_COLUMNS {
        // A weight gradient (`k` = every row of the batch) with few columns: each thread
        // multiplies its own columns single-threaded. `gemm`'s own split (a fork and join per
        // depth block) ran these at 0.70-0.85x the rate in training steps; at 512 columns and
        // more it was 0.9-1.03x, and each thread's own packed columns (4-8 MB, in its allocator
        // arena) added 66-81 MB of peak memory at H512 (docs/BENCHMARKS.md, issue 14 seventh
        // pass). Each output is the same chain of multiply-adds either way (`gemm` blocks the
        // depth by cache size alone, not by `n`), so the bits do not change, nor depend on the
        // thread count. Each thread streams the whole left operand (`k x m`): past four threads
        // (unmeasured; this was measured on two) `gemm`'s own split keeps the product.
        let part = n.div_ceil(threads);
        (0..n.div_ceil(part))
            .into_par_iter()
            .map(|index| index * part)
            .for_each(|first| {
                // SAFETY: columns first..first + width of every operand, within the bounds
                // asserted above; the parts' columns of `dst` are disjoint.
                unsafe { product.columns(m, first..(first + part).min(n), Parallelism::None) }
            });
        return;
    }
    let parallelism = if parallel {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the assertions above bound every element the strided views address.
    unsafe { product.columns(m, 0..n, parallelism) }
}

/// One product's operands as addresses (so that threads can share them) with their strides.
#[derive(Clone, Copy)]
struct Product {
    k: usize,
    dst: usize,
    dst_rs: usize,
    lhs: (usize, usize, usize),
    rhs: (usize, usize, usize),
}

impl Product {
    /// `dst[.., columns] = lhs * rhs[.., columns]`.
    ///
    /// # Safety
    /// The operands hold every element the strides address for `m` rows, these columns and
    /// depth `k`, and no other thread writes these columns of `dst` meanwhile.
    unsafe fn columns(&self, m: usize, columns: std::ops::Range<usize>, parallelism: Parallelism) {
        let (lhs, lhs_rs, lhs_cs) = self.lhs;
        let (rhs, rhs_rs, rhs_cs) = self.rhs;
        let first = columns.start;
        // SAFETY: as the caller guarantees.
        unsafe {
            gemm::gemm(
                m,
                columns.len(),
                self.k,
                (self.dst as *mut f32).add(first),
                1,
                self.dst_rs as isize,
                false,
                lhs as *const f32,
                lhs_cs as isize,
                lhs_rs as isize,
                (rhs as *const f32).add(first * rhs_cs),
                rhs_cs as isize,
                rhs_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Split by columns over any number of threads, a weight-gradient product has the bits of
    /// one single-threaded `gemm` call (transposed and strided operands, ragged parts).
    #[test]
    fn the_column_split_has_the_bits_of_one_call() {
        let (m, n, k) = (70, SPLIT_COLUMNS - 3, 1_500);
        let value = |i: usize| ((i as f32) * 0.618).sin();
        // lhs is the transpose of a row-major [k, m] (as `da^T`), rhs row-major [k, n].
        let lhs: Vec<f32> = (0..k * m).map(value).collect();
        let rhs: Vec<f32> = (0..k * n).map(|i| value(i + 7)).collect();
        let mut want = vec![0f32; m * n];
        let whole = Product {
            k,
            dst: want.as_mut_ptr() as usize,
            dst_rs: n,
            lhs: (lhs.as_ptr() as usize, 1, m),
            rhs: (rhs.as_ptr() as usize, n, 1),
        };
        // SAFETY: the buffers hold m x k, k x n and m x n values at these strides.
        unsafe { whole.columns(m, 0..n, Parallelism::None) };
        // 8 threads take `gemm`'s own split: the same bits too.
        for threads in [2, 3, 4, 8] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let mut got = vec![f32::NAN; m * n];
            pool.install(|| matmul((m, n, k), &mut got, n, &lhs, (1, m), &rhs, (n, 1)));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{threads} threads");
        }
    }
}
