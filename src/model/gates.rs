//! The element-wise part of an LSTM step: gate activations and the cell update (forward), and
//! the gate derivatives (backward), one batch row at a time, vectorised.
//!
//! libm's `expf`/`tanhf` are scalar calls and were ~8 % of a training step; here `exp` is a
//! branch-free polynomial (Cephes' `expf`, relative error ~1e-7) that the compiler vectorises,
//! built for AVX-512 or AVX2 at run time like [`super::kernels`]. NaN passes through, so a
//! diverging run is still caught by the loss check.

/// `e^x` for f32: `x = n ln 2 + r`, `e^r` by a degree-6 polynomial, `2^n` through the exponent
/// bits. Saturates to 0 and +inf outside about +-88.
#[cfg(test)]
fn exp(x: f32) -> f32 {
    exp_with::<true>(x)
}

/// Whether the portable loops may use `mul_add`: a single instruction wherever it exists, but on
/// x86-64 without FMA a libm call that made the portable training path ~35x slower.
pub const PORTABLE_FUSED: bool = cfg!(any(target_feature = "fma", not(target_arch = "x86_64")));

/// `a * b + c`: fused (one rounding) when `FUSED`, else a multiply and an add.
#[inline(always)]
pub fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

#[inline(always)]
fn exp_with<const FUSED: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-88.0, 88.5);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = madd::<FUSED>(p, r, 1.398_199_9e-3);
    let p = madd::<FUSED>(p, r, 8.333_452e-3);
    let p = madd::<FUSED>(p, r, 4.166_579_6e-2);
    let p = madd::<FUSED>(p, r, 1.666_666_5e-1);
    let p = madd::<FUSED>(p, r, 0.5);
    let e_r = madd::<FUSED>(p, r * r, r) + 1.0;
    // 2^n from the bits of n + 127 + 2^23, whose low mantissa bits hold n + 127: `n as i32`
    // would be a saturating cast, which the compiler runs one lane at a time (a quarter of this
    // function's time). NaN stays NaN through `e_r`.
    let two_n = f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23);
    e_r * two_n
}

#[cfg(test)]
pub fn sigmoid(x: f32) -> f32 {
    sigmoid_with::<true>(x)
}

#[cfg(test)]
pub fn tanh(x: f32) -> f32 {
    tanh_with::<true>(x)
}

#[inline(always)]
fn sigmoid_with<const FUSED: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp_with::<FUSED>(-x))
}

#[inline(always)]
fn tanh_with<const FUSED: bool>(x: f32) -> f32 {
    2.0 / (1.0 + exp_with::<FUSED>(-2.0 * x)) - 1.0
}

/// One batch row of a forward step, restricted to a team member's hidden units.
pub struct ForwardRow<'a> {
    /// `h_{t-1} W_hh^T` for gates i, f, g, o.
    pub recurrent: [&'a [f32]; 4],
    /// `x_t W_ih^T` for gates i, f, g, o.
    pub input: GateInput<'a>,
    pub bias: [&'a [f32]; 4],
    pub c_prev: &'a [f32],
    pub c: &'a mut [f32],
    pub h: &'a mut [f32],
    /// The activated gates, kept for the backward pass.
    pub gates: [&'a mut [f32]; 4],
    pub tanh_c: &'a mut [f32],
}

/// Where a forward row finds its input projection `x_t W_ih^T`.
pub enum GateInput<'a> {
    Given([&'a [f32]; 4]),
    /// In the row's `gates` themselves, which the activations then overwrite: each lane is read
    /// before it is written, so training needs no copy of the row (one `[T, B, 4H]` buffer
    /// holds the projection, then the gates).
    InGates,
}

impl<'a> ForwardRow<'a> {
    /// The input slices and whether they are the gates' own: a kernel reads lane `j` of the
    /// input from `gates` then, before it writes the activations there.
    fn split_input(&self) -> ([&'a [f32]; 4], bool) {
        match self.input {
            GateInput::Given(x) => (x, false),
            GateInput::InGates => ([&[]; 4], true),
        }
    }
}

#[inline(always)]
fn forward_impl<const FUSED: bool>(row: ForwardRow) {
    match row.split_input() {
        (_, true) => forward_lanes::<FUSED, true>(row),
        (_, false) => forward_lanes::<FUSED, false>(row),
    }
}

/// [`forward_impl`] with the input's place fixed at compile time, so each loop vectorises.
#[inline(always)]
fn forward_lanes<const FUSED: bool, const IN_GATES: bool>(row: ForwardRow) {
    let n = row.h.len();
    let (input, _) = row.split_input();
    let [ri, rf, rg, ro] = row.recurrent.map(|s| &s[..n]);
    let [xi, xf, xg, xo] = input.map(|s| if IN_GATES { s } else { &s[..n] });
    let [bi, bf, bg, bo] = row.bias.map(|s| &s[..n]);
    let [gi, gf, gg, go] = row.gates.map(|s| &mut s[..n]);
    let (c_prev, c, tanh_c) = (&row.c_prev[..n], &mut row.c[..n], &mut row.tanh_c[..n]);
    for j in 0..n {
        let x = if IN_GATES {
            [gi[j], gf[j], gg[j], go[j]]
        } else {
            [xi[j], xf[j], xg[j], xo[j]]
        };
        let i = sigmoid_with::<FUSED>(ri[j] + x[0] + bi[j]);
        let f = sigmoid_with::<FUSED>(rf[j] + x[1] + bf[j]);
        let g = tanh_with::<FUSED>(rg[j] + x[2] + bg[j]);
        let o = sigmoid_with::<FUSED>(ro[j] + x[3] + bo[j]);
        // c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)
        let c_t = madd::<FUSED>(f, c_prev[j], i * g);
        let t = tanh_with::<FUSED>(c_t);
        c[j] = c_t;
        tanh_c[j] = t;
        row.h[j] = o * t;
        gi[j] = i;
        gf[j] = f;
        gg[j] = g;
        go[j] = o;
    }
}

/// One batch row of a backward step, restricted to a team member's hidden units.
pub struct BackwardRow<'a> {
    /// In: the activated gates i, f, g, o; out: the gradients of their pre-activations (each
    /// lane read before it is written, so the saved gates need no copy).
    pub gates: [&'a mut [f32]; 4],
    pub tanh_c: &'a [f32],
    pub c_prev: &'a [f32],
    /// The loss gradient reaching `h_t` from above, and from step `t + 1`.
    pub dh_out: &'a [f32],
    pub dh_next: &'a [f32],
    /// In: the gradient reaching `c_t` from step `t + 1`; out: the one reaching `c_{t-1}`.
    pub dc: &'a mut [f32],
}

#[inline(always)]
fn backward_impl(row: BackwardRow) {
    let n = row.dc.len();
    let [gi, gf, gg, go] = row.gates.map(|s| &mut s[..n]);
    let (tanh_c, c_prev) = (&row.tanh_c[..n], &row.c_prev[..n]);
    let (dh_out, dh_next, dc_io) = (&row.dh_out[..n], &row.dh_next[..n], &mut row.dc[..n]);
    for j in 0..n {
        let (i, f, g, o, t) = (gi[j], gf[j], gg[j], go[j], tanh_c[j]);
        let dh = dh_out[j] + dh_next[j];
        let dc = dc_io[j] + dh * o * (1.0 - t * t);
        gi[j] = dc * g * i * (1.0 - i);
        gf[j] = dc * c_prev[j] * f * (1.0 - f);
        gg[j] = dc * i * (1.0 - g * g);
        go[j] = dh * t * o * (1.0 - o);
        dc_io[j] = dc * f;
    }
}

/// Instruction sets the element-wise loops are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2,
    Baseline,
}

impl Simd {
    /// The best this CPU runs, within the `ECHOAI_SIMD` cap ([`super::isa`]).
    pub fn detect() -> Simd {
        Simd::for_isa(super::isa::chosen())
    }

    fn for_isa(isa: super::isa::Isa) -> Simd {
        match isa {
            super::isa::Isa::Avx512 => Simd::Avx512,
            super::isa::Isa::Avx2 => Simd::Avx2,
            super::isa::Isa::Portable => Simd::Baseline,
        }
    }

    /// Every instruction set this CPU runs.
    #[cfg(test)]
    pub fn available() -> Vec<Simd> {
        super::isa::Isa::available()
            .into_iter()
            .map(Simd::for_isa)
            .collect()
    }

    pub fn forward(self, row: ForwardRow) {
        match self {
            // SAFETY: `detect` chose these only where the CPU has the features.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { forward_avx512(row) },
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { forward_avx2(row) },
            _ => forward_impl::<PORTABLE_FUSED>(row),
        }
    }

    /// `out[j] = tanh(c[j])` exactly as [`Simd::forward`] computes `tanh(c_t)` on this
    /// instruction set (the same bits), so the backward pass recomputes it from the kept cell
    /// states instead of keeping a `[T, B, H]` copy of it.
    pub fn tanh_into(self, c: &[f32], out: &mut [f32]) {
        assert_eq!(c.len(), out.len(), "tanh: lengths differ");
        match self {
            // SAFETY: `detect` chose these only where the CPU has the features.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { tanh_avx512(c, out) },
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { tanh_avx2(c, out) },
            _ => tanh_impl::<PORTABLE_FUSED>(c, out),
        }
    }

    pub fn backward(self, row: BackwardRow) {
        match self {
            // SAFETY: `detect` chose these only where the CPU has the features.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { backward_avx512(row) },
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { backward_avx2(row) },
            _ => backward_impl(row),
        }
    }
}

#[inline(always)]
fn exp_shifted_impl<const FUSED: bool>(row: &mut [f32], shift: f32) -> f32 {
    for v in row.iter_mut() {
        *v = exp_with::<FUSED>(*v - shift);
    }
    // Sixteen running sums: a single one would not vectorise (float addition does not reassociate).
    let mut lanes = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

impl Simd {
    /// `row[j] = e^(row[j] - shift)`; returns the sum of the new values.
    pub fn exp_shifted(self, row: &mut [f32], shift: f32) -> f32 {
        match self {
            // SAFETY: `detect` chose these only where the CPU has the features.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { exp_shifted_avx512(row, shift) },
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { exp_shifted_avx2(row, shift) },
            _ => exp_shifted_impl::<PORTABLE_FUSED>(row, shift),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exp_shifted_avx512(row: &mut [f32], shift: f32) -> f32 {
    exp_shifted_impl::<true>(row, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(row: &mut [f32], shift: f32) -> f32 {
    exp_shifted_impl::<true>(row, shift)
}

/// The forward row on explicit AVX-512: as [`forward_impl`], but `1 / d` is `vrcp14ps` and one
/// Newton step (the compiler's `vdivps` on 16 lanes issues once per ~10 cycles, and each unit
/// takes five), and `2^n` is `vscalefps`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn forward_avx512(row: ForwardRow) {
    use std::arch::x86_64::*;
    let n = row.h.len();
    let (input, in_gates) = row.split_input();
    let [ri, rf, rg, ro] = row.recurrent.map(|s| &s[..n]);
    let [xi, xf, xg, xo] = input.map(|s| if in_gates { s } else { &s[..n] });
    let [bi, bf, bg, bo] = row.bias.map(|s| &s[..n]);
    let [gi, gf, gg, go] = row.gates.map(|s| &mut s[..n]);
    let (c_prev, c, tanh_c, h) = (
        &row.c_prev[..n],
        &mut row.c[..n],
        &mut row.tanh_c[..n],
        &mut row.h[..n],
    );
    let mut j = 0;
    while j < n {
        let mask = lanes_left(n - j);
        // SAFETY: every slice holds n values (sliced above) and the mask covers only lanes
        // j .. min(j + 16, n); AVX-512F is present (this function's target feature).
        unsafe {
            let load = |s: &[f32]| _mm512_maskz_loadu_ps(mask, s.as_ptr().add(j));
            let x = if in_gates {
                [load(gi), load(gf), load(gg), load(go)]
            } else {
                [load(xi), load(xf), load(xg), load(xo)]
            };
            let pre =
                |r: &[f32], x: __m512, b: &[f32]| _mm512_add_ps(_mm512_add_ps(load(r), x), load(b));
            let i = sigmoid16(pre(ri, x[0], bi));
            let f = sigmoid16(pre(rf, x[1], bf));
            let g = tanh16(pre(rg, x[2], bg));
            let o = sigmoid16(pre(ro, x[3], bo));
            let c_t = _mm512_fmadd_ps(f, load(c_prev), _mm512_mul_ps(i, g));
            let t = tanh16(c_t);
            let store =
                |s: &mut [f32], v: __m512| _mm512_mask_storeu_ps(s.as_mut_ptr().add(j), mask, v);
            store(c, c_t);
            store(tanh_c, t);
            store(h, _mm512_mul_ps(o, t));
            store(gi, i);
            store(gf, f);
            store(gg, g);
            store(go, o);
        }
        j += 16;
    }
}

/// [`exp_with`] on 16 lanes (NaN stays NaN).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let set = _mm512_set1_ps;
    // max/min return their second operand when either is NaN: x last keeps a NaN.
    let x = _mm512_min_ps(set(88.5), _mm512_max_ps(set(-88.0), x));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_fmadd_ps(
        x,
        set(std::f32::consts::LOG2_E),
        set(0.5),
    ));
    let r = _mm512_fnmadd_ps(n, set(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, set(-2.121_944_4e-4), r);
    let mut p = set(1.987_569_1e-4);
    for coefficient in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, set(coefficient));
    }
    let e_r = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), set(1.0));
    _mm512_scalef_ps(e_r, n)
}

/// `1 / d` to within about an ulp: a 14-bit estimate and one Newton step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn recip16(d: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let r = _mm512_rcp14_ps(d);
    // r (2 - d r)
    _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0)))
}

/// The mask of a 16-lane pass with `left` values to go: all lanes, or the first `left`.
#[cfg(target_arch = "x86_64")]
#[inline]
fn lanes_left(left: usize) -> std::arch::x86_64::__mmask16 {
    if left >= 16 {
        0xffff
    } else {
        (1u16 << left) - 1
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn sigmoid16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let minus_x = _mm512_sub_ps(_mm512_setzero_ps(), x);
    let s = recip16(_mm512_add_ps(_mm512_set1_ps(1.0), exp16(minus_x)));
    // Below about -87 the reciprocal is subnormal (the portable path's `2^n` overflows to inf
    // there and gives 0); subnormal gates would also slow every later product they enter.
    // "Not less than" is true for NaN, which passes through.
    let normal = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(s, _mm512_set1_ps(f32::MIN_POSITIVE));
    _mm512_maskz_mov_ps(normal, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn tanh16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // 2 sigmoid(2x) - 1
    let two = _mm512_set1_ps(2.0);
    _mm512_fmsub_ps(two, sigmoid16(_mm512_mul_ps(two, x)), _mm512_set1_ps(1.0))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2(row: ForwardRow) {
    forward_impl::<true>(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn backward_avx512(row: BackwardRow) {
    backward_impl(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_avx2(row: BackwardRow) {
    backward_impl(row)
}

#[inline(always)]
fn tanh_impl<const FUSED: bool>(c: &[f32], out: &mut [f32]) {
    for (t, &x) in out.iter_mut().zip(c) {
        *t = tanh_with::<FUSED>(x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tanh_avx2(c: &[f32], out: &mut [f32]) {
    tanh_impl::<true>(c, out)
}

/// # Safety
/// AVX-512F present; `c` and `out` of equal length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tanh_avx512(c: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len().min(c.len());
    let mut j = 0;
    while j < n {
        let mask = lanes_left(n - j);
        // SAFETY: the mask covers only lanes j .. min(j + 16, n), within both slices.
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask, c.as_ptr().add(j));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(j), mask, tanh16(x));
        }
        j += 16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_sigmoid_tanh_match_libm() {
        let mut worst = (0.0f64, 0.0f64, 0.0f64);
        for i in -20_000..=20_000 {
            let x = i as f32 * 0.004;
            let e = (x as f64).exp();
            worst.0 = worst.0.max(((exp(x) as f64) - e).abs() / e);
            worst.1 = worst
                .1
                .max((sigmoid(x) as f64 - 1.0 / (1.0 + (-x as f64).exp())).abs());
            worst.2 = worst.2.max((tanh(x) as f64 - (x as f64).tanh()).abs());
        }
        assert!(worst.0 < 3e-7, "exp relative error {}", worst.0);
        // The unfused polynomial (x86-64 without FMA) is as good.
        let unfused = (-20_000..=20_000)
            .map(|i| i as f32 * 0.004)
            .map(|x| ((exp_with::<false>(x) as f64) - (x as f64).exp()).abs() / (x as f64).exp())
            .fold(0.0f64, f64::max);
        assert!(unfused < 3e-7, "unfused exp relative error {unfused}");
        assert!(worst.1 < 2e-7, "sigmoid error {}", worst.1);
        assert!(worst.2 < 4e-7, "tanh error {}", worst.2);
        assert_eq!(sigmoid(-200.0), 0.0);
        assert_eq!(sigmoid(200.0), 1.0);
        assert_eq!(tanh(200.0), 1.0);
        assert_eq!(tanh(-200.0), -1.0);
        assert!(sigmoid(f32::NAN).is_nan() && tanh(f32::NAN).is_nan());
    }

    /// The LSTM cell in f64, written from the equations (not from the kernels): forward gives
    /// (gates i, f, g, o; c; tanh c; h), backward the pre-activation gradients and the carried dc.
    struct Reference;

    impl Reference {
        fn sigmoid(z: f64) -> f64 {
            1.0 / (1.0 + (-z).exp())
        }

        fn forward(pre: [f64; 4], c_prev: f64) -> ([f64; 4], f64, f64, f64) {
            let (i, f) = (Self::sigmoid(pre[0]), Self::sigmoid(pre[1]));
            let (g, o) = (pre[2].tanh(), Self::sigmoid(pre[3]));
            let c = f * c_prev + i * g;
            (([i, f, g, o]), c, c.tanh(), o * c.tanh())
        }

        /// `gates` activated, `t = tanh(c_t)`; `dh` reaches h_t, `dc` reaches c_t from t + 1.
        fn backward(gates: [f64; 4], t: f64, c_prev: f64, dh: f64, dc: f64) -> ([f64; 4], f64) {
            let [i, f, g, o] = gates;
            let dc = dc + dh * o * (1.0 - t * t);
            let da = [
                dc * g * i * (1.0 - i),
                dc * c_prev * f * (1.0 - f),
                dc * i * (1.0 - g * g),
                dh * t * o * (1.0 - o),
            ];
            (da, dc * f)
        }
    }

    /// A diverging run must reach the loss as NaN, and saturated gates must stay in [0, 1].
    #[test]
    fn every_instruction_set_passes_nan_and_saturates_at_the_extremes() {
        let pre = [
            f32::NAN,
            200.0,
            -200.0,
            1e30,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        let n = pre.len();
        let zeros = vec![0.0f32; n];
        for simd in Simd::available() {
            let (mut c, mut h, mut t) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            let mut g = [vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]];
            {
                let [g0, g1, g2, g3] = &mut g;
                simd.forward(ForwardRow {
                    recurrent: [&pre, &pre, &pre, &pre],
                    input: GateInput::Given([&zeros, &zeros, &zeros, &zeros]),
                    bias: [&zeros, &zeros, &zeros, &zeros],
                    c_prev: &zeros,
                    c: &mut c,
                    h: &mut h,
                    gates: [g0, g1, g2, g3],
                    tanh_c: &mut t,
                });
            }
            assert!(
                h[0].is_nan() && c[0].is_nan(),
                "{simd:?}: NaN in, {} out",
                h[0]
            );
            for j in 1..n {
                let sign = if pre[j] > 0.0 { 1.0 } else { 0.0 };
                assert_eq!(g[0][j], sign, "{simd:?} sigmoid({})", pre[j]);
                assert_eq!(g[2][j], 2.0 * sign - 1.0, "{simd:?} tanh({})", pre[j]);
                assert!(h[j].is_finite() && h[j].abs() <= 1.0, "{simd:?} h {}", h[j]);
            }
        }
    }

    #[test]
    fn every_instruction_set_matches_the_reference_cell() {
        let n = 37;
        let v = |s: f32| {
            (0..n)
                .map(|j| ((j as f32 * 0.37 + s).sin()) * 3.0)
                .collect::<Vec<f32>>()
        };
        let (r, x, b, c_prev) = (
            [v(0.1), v(0.2), v(0.3), v(0.4)],
            [v(0.5), v(0.6), v(0.7), v(0.8)],
            [v(0.9), v(1.0), v(1.1), v(1.2)],
            v(1.3),
        );
        let close = |got: f32, want: f64, what: &str, simd: Simd| {
            assert!(
                (got as f64 - want).abs() < 2e-6,
                "{simd:?} {what}: {got} vs {want}"
            );
        };
        // One forward row: `(gates, c, h, tanh c)`, the input given or in the gates' place.
        let forward = |simd: Simd, in_gates: bool| {
            let (mut c, mut h, mut t) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            let mut g = if in_gates {
                x.clone()
            } else {
                [vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]]
            };
            let [g0, g1, g2, g3] = &mut g;
            simd.forward(ForwardRow {
                recurrent: [&r[0], &r[1], &r[2], &r[3]],
                input: if in_gates {
                    GateInput::InGates
                } else {
                    GateInput::Given([&x[0], &x[1], &x[2], &x[3]])
                },
                bias: [&b[0], &b[1], &b[2], &b[3]],
                c_prev: &c_prev,
                c: &mut c,
                h: &mut h,
                gates: [g0, g1, g2, g3],
                tanh_c: &mut t,
            });
            (g, c, h, t)
        };
        for simd in Simd::available() {
            let (g, c, h, t) = forward(simd, false);
            for j in 0..n {
                let pre = [0, 1, 2, 3].map(|q| (r[q][j] + x[q][j] + b[q][j]) as f64);
                let (gates, c_ref, t_ref, h_ref) = Reference::forward(pre, c_prev[j] as f64);
                for q in 0..4 {
                    close(g[q][j], gates[q], "gate", simd);
                }
                close(c[j], c_ref, "c", simd);
                close(t[j], t_ref, "tanh c", simd);
                close(h[j], h_ref, "h", simd);
            }
            // Training keeps the input projection in the gates' place: the same bits.
            let (g2, c2, h2, t2) = forward(simd, true);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for (what, given, in_gates) in [("c", &c, &c2), ("h", &h, &h2), ("tanh c", &t, &t2)]
                .into_iter()
                .chain((0..4).map(|q| ("gate", &g[q], &g2[q])))
            {
                assert_eq!(
                    bits(given),
                    bits(in_gates),
                    "{simd:?} {what} with the input in place"
                );
            }
            // The backward pass recomputes tanh(c_t): it must be the forward's, bit for bit.
            let mut again = vec![f32::NAN; n];
            simd.tanh_into(&c, &mut again);
            assert_eq!(bits(&again), bits(&t), "{simd:?} tanh(c) recomputed");
        }
        // The backward pass: gate derivatives and the carried cell gradient.
        let gates = [v(1.5), v(1.6), v(1.7), v(1.8)]
            .map(|g| g.iter().map(|x| sigmoid(*x)).collect::<Vec<f32>>());
        let tanh_c = v(1.9).iter().map(|x| tanh(*x)).collect::<Vec<f32>>();
        let (dh_out, dh_next, dc_in) = (v(2.0), v(2.1), v(1.4));
        for simd in Simd::available() {
            let mut dc = dc_in.clone();
            let mut da = gates.clone();
            {
                let [d0, d1, d2, d3] = &mut da;
                simd.backward(BackwardRow {
                    gates: [d0, d1, d2, d3],
                    tanh_c: &tanh_c,
                    c_prev: &c_prev,
                    dh_out: &dh_out,
                    dh_next: &dh_next,
                    dc: &mut dc,
                });
            }
            for j in 0..n {
                let (da_ref, dc_ref) = Reference::backward(
                    [0, 1, 2, 3].map(|q| gates[q][j] as f64),
                    tanh_c[j] as f64,
                    c_prev[j] as f64,
                    (dh_out[j] + dh_next[j]) as f64,
                    dc_in[j] as f64,
                );
                for q in 0..4 {
                    assert!(
                        (da[q][j] as f64 - da_ref[q]).abs() < 1e-5,
                        "{simd:?} da{q}: {} vs {}",
                        da[q][j],
                        da_ref[q]
                    );
                }
                assert!((dc[j] as f64 - dc_ref).abs() < 1e-5, "{simd:?} dc");
            }
        }
    }
}
