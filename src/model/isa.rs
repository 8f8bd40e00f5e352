//! The vector instruction set the hand-written kernels may use: the best the CPU has, capped by
//! `ECHOAI_SIMD` (`avx512`, `avx2` or `portable`). The cap lets one AVX-512 machine run, test and
//! time the code paths that machines without AVX-512 take. (The `gemm` crate chooses its own
//! microkernel at run time from the CPU alone.)

use std::sync::OnceLock;

pub const ENV: &str = "ECHOAI_SIMD";

/// Ordered: a cap allows its level and every level below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    pub fn parse(text: &str) -> Option<Isa> {
        match text.trim().to_ascii_lowercase().as_str() {
            "portable" | "none" | "scalar" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx-512" | "avx512f" => Some(Isa::Avx512),
            _ => None,
        }
    }

    /// Every level this CPU runs, lowest first, ignoring the cap (the kernels' tests run each).
    pub fn available() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&isa| isa <= Isa::of_cpu())
            .collect()
    }

    /// The best level this CPU runs, ignoring the cap.
    pub fn of_cpu() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// The CPU's level, lowered to the cap in `ECHOAI_SIMD` if one is set (read once per process).
pub fn chosen() -> Isa {
    static CHOSEN: OnceLock<Isa> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let cpu = Isa::of_cpu();
        match std::env::var(ENV) {
            Err(_) => cpu,
            Ok(text) => match Isa::parse(&text) {
                Some(cap) => cap.min(cpu),
                None => {
                    eprintln!(
                        "warning: {ENV}={text:?} is not one of avx512, avx2, portable; using {}",
                        cpu.name()
                    );
                    cpu
                }
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_and_order() {
        assert_eq!(Isa::parse(" AVX2 "), Some(Isa::Avx2));
        assert_eq!(Isa::parse("avx-512"), Some(Isa::Avx512));
        assert_eq!(Isa::parse("portable"), Some(Isa::Portable));
        assert_eq!(Isa::parse("sse9"), None);
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert!(chosen() <= Isa::of_cpu());
    }
}
