//! The machine's physical float limit: fused multiply-adds in registers only, no memory traffic,
//! on every thread of the pool at once. `bench train` prints it beside the GEMM ceiling, so a
//! GEMM library that leaves half the vector width unused shows as half the peak.

use std::time::Instant;

/// Fused multiply-adds per timed pass and accumulator chain; enough for ~10 ms per pass.
const ROUNDS: usize = 1 << 20;

/// The instruction set the loop used and the GFLOP/s summed over all threads (median of passes).
pub struct FmaPeak {
    pub isa: &'static str,
    pub gflops: f64,
}

pub fn fma_peak() -> Option<FmaPeak> {
    #[cfg(target_arch = "x86_64")]
    {
        let (isa, lanes, run): (&'static str, usize, fn(usize) -> f32) =
            if is_x86_feature_detected!("avx512f") {
                ("AVX-512", 16, |rounds| {
                    // SAFETY: the CPU has AVX-512F (checked above).
                    unsafe { x86::chains_avx512(rounds) }
                })
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                ("AVX2", 8, |rounds| {
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    unsafe { x86::chains_avx2(rounds) }
                })
            } else {
                return None;
            };
        let mut passes = Vec::new();
        for _ in 0..7 {
            let t0 = Instant::now();
            let sums = rayon::broadcast(|_| run(ROUNDS));
            let seconds = t0.elapsed().as_secs_f64();
            // Keeps the results alive, so the loops cannot be optimised away.
            std::hint::black_box(sums);
            passes.push(seconds);
        }
        passes.sort_by(f64::total_cmp);
        let flops = (rayon::current_num_threads() * ROUNDS * x86::CHAINS * lanes * 2) as f64;
        Some(FmaPeak {
            isa,
            gflops: flops / passes[passes.len() / 2] / 1e9,
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Independent accumulator chains: two FMA ports times four cycles of latency, and a few
    /// more so that neither port ever waits.
    pub const CHAINS: usize = 12;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn chains_avx512(rounds: usize) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..rounds {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let mut sum = _mm512_setzero_ps();
        for x in acc {
            sum = _mm512_add_ps(sum, x);
        }
        _mm512_reduce_add_ps(sum)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn chains_avx2(rounds: usize) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..rounds {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut lanes = [0f32; 8];
        let mut sum = _mm256_setzero_ps();
        for x in acc {
            sum = _mm256_add_ps(sum, x);
        }
        // SAFETY: `lanes` holds the 8 floats written.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum()
    }
}
