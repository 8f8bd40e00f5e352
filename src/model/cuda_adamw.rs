//! AdamW's update on CUDA (`adamw.cu`): one launch per parameter instead of a dozen candle ops,
//! and one flag for the whole step instead of a host read per parameter. Each host read waits
//! for the GPU to drain, and the step used to make two per parameter.

use std::sync::OnceLock;

use candle_core::cuda::cudarc;
use candle_core::{CudaDevice, Result, Tensor, bail};
use cudarc::driver::{CudaSlice, PushKernelArg};

use super::cuda_util::{Ptr, alloc, compiled, launch_error, launch_for, tensor_ptr, wrap};

const SOURCE: &str = include_str!("adamw.cu");

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    compiled(&PTX, SOURCE)
}

/// The step's scalars, in `adamw.cu`'s order: beta1, 1 - beta1, beta2, 1 - beta2, the clip
/// scale, 1 / correction1, 1 / correction2, eps, lr, 1 - lr * weight decay.
pub type AdamWScalars = [f32; 10];

/// Set on the device by any update whose new weight is not finite.
pub struct NonFiniteFlag {
    flag: CudaSlice<i32>,
    dev: CudaDevice,
}

impl NonFiniteFlag {
    pub fn new(dev: &CudaDevice) -> Result<Self> {
        Ok(NonFiniteFlag {
            flag: dev.alloc_zeros::<i32>(1)?,
            dev: dev.clone(),
        })
    }

    /// Reads the flag: waits for every update launched before.
    pub fn is_set(&self) -> Result<bool> {
        Ok(self
            .dev
            .clone_dtoh(&self.flag)?
            .first()
            .is_some_and(|&f| f != 0))
    }
}

/// `[w', m', v']` from `[w, g, m, v]` (f32, on CUDA, equal shapes).
pub fn adamw_update(
    [w, g, m, v]: [&Tensor; 4],
    k: &AdamWScalars,
    flag: &NonFiniteFlag,
) -> Result<[Tensor; 3]> {
    let dev = &flag.dev;
    if [g, m, v].iter().any(|t| t.shape() != w.shape()) {
        bail!("AdamW: a gradient or moment does not have its parameter's shape")
    }
    let n = w.elem_count();
    let (wp, _w) = tensor_ptr(w, dev)?;
    let (gp, _g) = tensor_ptr(g, dev)?;
    let (mp, _m) = tensor_ptr(m, dev)?;
    let (vp, _v) = tensor_ptr(v, dev)?;
    let out = [alloc(dev, n)?, alloc(dev, n)?, alloc(dev, n)?];
    let [nw, nm, nv] = [0, 1, 2].map(|i| Ptr::of(&out[i], dev, 0));
    let flag_ptr = Ptr::of(&flag.flag, dev, 0);
    let func = dev.get_or_load_custom_func("adamw", "echoai_adamw", ptx()?)?;
    let n64 = n as i64;
    let mut args = func.builder();
    args.arg(&wp.0).arg(&gp.0).arg(&mp.0).arg(&vp.0);
    args.arg(&nw.0).arg(&nm.0).arg(&nv.0).arg(&n64);
    for scalar in k {
        args.arg(scalar);
    }
    args.arg(&flag_ptr.0);
    // SAFETY: the arguments match `adamw` in adamw.cu, in order and type; the four inputs and
    // three outputs each hold `n` floats, and the flag one int.
    unsafe { args.launch(launch_for(n)) }.map_err(launch_error("adamw"))?;
    let shape = w.shape().clone();
    let [a, b, c] = out;
    Ok([
        wrap(a, dev, shape.clone()),
        wrap(b, dev, shape.clone()),
        wrap(c, dev, shape),
    ])
}
