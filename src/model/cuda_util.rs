//! What the CUDA ops (`cuda_lstm.rs`, `cuda_band_attention.rs`) share: device addresses of
//! candle's buffers, NVRTC compilation, launches and wrapping results as tensors.
//!
//! The ops work on raw addresses on candle's single stream. Its frees are stream-ordered, so a
//! buffer dropped after its last launch is never reused before that launch runs.

use std::sync::OnceLock;

use candle_core::cuda::cudarc;
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape, Storage, Tensor, bail};
use cudarc::cublas::sys as blas;
use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};

/// A device address of 4-byte values (`f32`, `u32`, `i32`), with the arithmetic the launches need.
#[derive(Clone, Copy)]
pub struct Ptr(pub u64);

impl Ptr {
    pub fn of<T: FourBytes>(slice: &CudaSlice<T>, dev: &CudaDevice, offset: usize) -> Ptr {
        let stream = dev.cuda_stream();
        let (base, _sync) = slice.device_ptr(&stream);
        Ptr(base + 4 * offset as u64)
    }

    pub fn at(self, floats: usize) -> Ptr {
        Ptr(self.0 + 4 * floats as u64)
    }
}

/// Element types whose addresses [`Ptr`] steps in 4 bytes.
pub trait FourBytes: cudarc::driver::DeviceRepr {}
impl FourBytes for f32 {}
impl FourBytes for u32 {}
impl FourBytes for i32 {}

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
    typed_tensor_ptr::<f32>(t, dev)
}

/// As [`tensor_ptr`], for a tensor of `T` (the `u32` targets of the loss, say).
pub fn typed_tensor_ptr<T: FourBytes + candle_core::cuda::CudaDType>(
    t: &Tensor,
    dev: &CudaDevice,
) -> Result<(Ptr, Tensor)> {
    let t = t.contiguous()?;
    let ptr = {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(cuda) = &*storage else {
            bail!("expected a CUDA tensor")
        };
        Ptr::of(cuda.as_cuda_slice::<T>()?, dev, layout.start_offset())
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

/// Row-major `C[m, n] = op(A) op(B) + beta C` (`op(A)` is `m x k`; `lda` etc. are row strides of
/// the matrices as stored). cuBLAS is column-major, so it computes `C^T = op(B)^T op(A)^T`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    dev: &CudaDevice,
    (m, n, k): (usize, usize, usize),
    (a, lda, trans_a): (Ptr, usize, bool),
    (b, ldb, trans_b): (Ptr, usize, bool),
    beta: f32,
    (c, ldc): (Ptr, usize),
) -> Result<()> {
    let op = |t: bool| {
        if t {
            blas::cublasOperation_t::CUBLAS_OP_T
        } else {
            blas::cublasOperation_t::CUBLAS_OP_N
        }
    };
    let compute = if candle_core::cuda::gemm_reduced_precision_f32() {
        blas::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    } else {
        blas::cublasComputeType_t::CUBLAS_COMPUTE_32F
    };
    let int = |v: usize| {
        i32::try_from(v)
            .map_err(|_| candle_core::Error::Msg(format!("{v} exceeds cuBLAS's 32-bit sizes")))
    };
    let alpha = 1.0f32;
    let handle = dev.cublas_handle();
    // SAFETY: every address is inside a live buffer of the sizes the caller computed from the
    // op's checked shapes, and the handle runs on candle's stream, which orders these products
    // after the launches that produce their inputs.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *handle.handle(),
            op(trans_b),
            op(trans_a),
            int(n)?,
            int(m)?,
            int(k)?,
            (&alpha as *const f32).cast(),
            b.0 as *const _,
            blas::cudaDataType_t::CUDA_R_32F,
            int(ldb)?,
            a.0 as *const _,
            blas::cudaDataType_t::CUDA_R_32F,
            int(lda)?,
            (&beta as *const f32).cast(),
            c.0 as *mut _,
            blas::cudaDataType_t::CUDA_R_32F,
            int(ldc)?,
            compute,
            blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| candle_core::Error::Msg(format!("cuBLAS: {e:?}")))
}

const UTIL_SOURCE: &str = include_str!("cuda_util.cu");

/// A buffer of `n` ones: the left operand that sums rows in a GEMM.
pub fn ones(dev: &CudaDevice, n: usize) -> Result<CudaSlice<f32>> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let func = dev.get_or_load_custom_func("fill", "echoai_util", compiled(&PTX, UTIL_SOURCE)?)?;
    let ones = alloc(dev, n)?;
    let (dst, one, len) = (Ptr::of(&ones, dev, 0), 1.0f32, n as i64);
    let mut args = func.builder();
    args.arg(&dst.0).arg(&one).arg(&len);
    // SAFETY: `fill`'s arguments, in order; `ones` holds `n` floats.
    unsafe { args.launch(launch_for(n)) }.map_err(launch_error("fill"))?;
    Ok(ones)
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
            ("output_loss.cu", include_str!("output_loss.cu")),
            ("cuda_util.cu", include_str!("cuda_util.cu")),
            ("adamw.cu", include_str!("adamw.cu")),
        ] {
            if let Err(e) = super::cudarc::nvrtc::compile_ptx(source) {
                panic!("{name}: {e:?}");
            }
        }
    }
}
