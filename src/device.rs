//! Choosing where tensors live: `cpu`, `cuda` (cargo feature `cuda`), `metal` (feature `metal`),
//! or `auto` (the first accelerator this build and machine can use, else the CPU).

use candle_core::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda,
    Metal,
}

impl DeviceChoice {
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Some(Self::Auto),
            "cpu" => Some(Self::Cpu),
            "cuda" | "gpu" => Some(Self::Cuda),
            "metal" => Some(Self::Metal),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Metal => "metal",
        }
    }

    /// Which choices this build can honour at all (the UI offers only these).
    pub fn compiled_in() -> Vec<DeviceChoice> {
        let mut v = vec![Self::Auto, Self::Cpu];
        if cfg!(feature = "cuda") {
            v.push(Self::Cuda);
        }
        if cfg!(feature = "metal") {
            v.push(Self::Metal);
        }
        v
    }

    pub fn open(self) -> Result<Device, String> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => {
                if cfg!(feature = "cuda")
                    && let Ok(d) = Device::new_cuda(0) {
                        return Ok(d);
                    }
                if cfg!(feature = "metal")
                    && let Ok(d) = Device::new_metal(0) {
                        return Ok(d);
                    }
                Ok(Device::Cpu)
            }
            Self::Cuda if !cfg!(feature = "cuda") => Err(
                "this build has no CUDA support: rebuild with `cargo build --release --features cuda`"
                    .into(),
            ),
            Self::Cuda => Device::new_cuda(0).map_err(|e| format!("cannot open CUDA device 0: {e}")),
            Self::Metal if !cfg!(feature = "metal") => Err(
                "this build has no Metal support: rebuild with `cargo build --release --features metal`"
                    .into(),
            ),
            Self::Metal => {
                Device::new_metal(0).map_err(|e| format!("cannot open Metal device 0: {e}"))
            }
        }
    }
}

/// [`describe`], and on the CPU the instruction set of the hand-written kernels (`ECHOAI_SIMD`
/// can cap it), so a run's log says which code path trained it.
pub fn describe_with_kernels(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} kernels)", crate::model::isa::chosen().name()),
        Device::Cuda(_) => format!("cuda ({})", if tf32() { "tf32" } else { "f32" }),
        other => describe(other).to_string(),
    }
}

pub fn describe(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

/// Lets f32 products on CUDA use TF32 tensor cores (10-bit mantissa inputs, f32 sums), as
/// PyTorch does by default for cuDNN's RNNs. Off by default; a no-op without CUDA.
pub fn set_tf32(on: bool) {
    candle_core::cuda::set_gemm_reduced_precision_f32(on);
}

pub fn tf32() -> bool {
    candle_core::cuda::gemm_reduced_precision_f32()
}
