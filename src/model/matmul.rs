//! The `gemm` crate behind one call with explicit strides, for the hand-written ops.

use gemm::Parallelism;

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
    let parallelism = if 2 * m * n * k >= 1 << 20 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the assertions above bound every element the strided views address.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
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
