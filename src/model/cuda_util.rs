//! What the CUDA ops (`cuda_lstm.rs`, `cuda_band_attention.rs`) share: device addresses of
//! candle's buffers, NVRTC compilation, launches and wrapping results as tensors.
//!
//! The ops work on raw addresses on candle's single stream. Its frees are stream-ordered, so a
//! buffer dropped after its last launch is never reused before that launch runs.

use std::sync::OnceLock;

use candle_core::cuda::cudarc;
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape, Storage, Tensor, bail};
use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig};

/// A device address in floats, with the arithmetic the launches need.
#[derive(Clone, Copy)]
pub struct Ptr(pub u64);

impl Ptr {
    pub fn of(slice: &CudaSlice<f32>, dev: &CudaDevice, offset: usize) -> Ptr {
        let stream = dev.cuda_stream();
        let (base, _sync) = slice.device_ptr(&stream);
        Ptr(base + 4 * offset as u64)
    }

    pub fn at(self, floats: usize) -> Ptr {
        Ptr(self.0 + 4 * floats as u64)
    }
}

/// The PTX of `source`, compiled with NVRTC on first use and kept in `cache`.
pub fn compiled(
    cache: &'static OnceLock<std::result::Result<String, String>>,
    source: &str,
) -> Result<&'static str> {
    cache
        .get_or_init(|| {
            cudarc::nvrtc::compile_ptx(source)
                .map(|p| p.to_src())
                .map_err(|e| format!("compiling CUDA kernels with NVRTC: {e}"))
        })
        .as_deref()
        .map_err(|e| candle_core::Error::Msg(e.clone()))
}

/// `f32` values of a tensor on `dev` (made contiguous), as a device address. The tensor is
/// returned so its memory outlives the launches that read it.
pub fn tensor_ptr(t: &Tensor, dev: &CudaDevice) -> Result<(Ptr, Tensor)> {
    let t = t.contiguous()?;
    let ptr = {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(cuda) = &*storage else {
            bail!("expected a CUDA tensor")
        };
        Ptr::of(cuda.as_cuda_slice::<f32>()?, dev, layout.start_offset())
    };
    Ok((ptr, t))
}

pub fn storage_ptr(s: &CudaStorage, l: &Layout) -> Result<Ptr> {
    if !l.is_contiguous() {
        bail!("expected contiguous inputs on CUDA")
    }
    Ok(Ptr::of(
        s.as_cuda_slice::<f32>()?,
        &s.device,
        l.start_offset(),
    ))
}

pub fn ensure_f32(s: &CudaStorage) -> Result<()> {
    s.as_cuda_slice::<f32>().map(|_| ())
}

pub fn launch_for(threads: usize) -> LaunchConfig {
    LaunchConfig::for_num_elems(threads as u32)
}

/// An uninitialised buffer: every caller writes it in full before reading it.
pub fn alloc(dev: &CudaDevice, len: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: f32 has no invalid bit patterns, and callers fill the buffer before reading.
    unsafe { dev.alloc::<f32>(len.max(1)) }
}

/// A tensor (outside autograd) over `slice`.
pub fn wrap(slice: CudaSlice<f32>, dev: &CudaDevice, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone())),
        shape,
        candle_core::op::BackpropOp::none(),
        false,
    )
}

/// A launch's error as candle's, naming the kernel.
pub fn launch_error(kernel: &str) -> impl Fn(cudarc::driver::DriverError) -> candle_core::Error {
    let kernel = kernel.to_string();
    move |e| candle_core::Error::Msg(format!("CUDA kernel {kernel}: {e}"))
}

#[cfg(test)]
mod tests {
    /// NVRTC needs no GPU, so the build machine catches what would otherwise fail only on a
    /// lent one (NVRTC has no `math.h`: `INFINITY` once broke the attention kernels there).
    #[test]
    fn every_kernel_source_compiles_with_nvrtc() {
        for (name, source) in [
            ("cuda_lstm.cu", include_str!("cuda_lstm.cu")),
            ("band_attention.cu", include_str!("band_attention.cu")),
        ] {
            if let Err(e) = super::cudarc::nvrtc::compile_ptx(source) {
                panic!("{name}: {e:?}");
            }
        }
    }
}
