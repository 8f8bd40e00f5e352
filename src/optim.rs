//! AdamW (Loshchilov & Hutter, 2019) with global-norm gradient clipping, whose moment estimates
//! can be saved and restored so a resumed run continues exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use rayon::prelude::*;

use crate::model::{storage_address, with_values, with_values_mut};

#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

pub struct AdamW {
    /// Sorted by name, so updates happen in the same order on every run.
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Per parameter, what the CPU update knows of `m` and `v` (see [`MomentBound`]).
    bounds: Vec<MomentBound>,
    pub step: u64,
    config: AdamWConfig,
    /// Runs the tensor-op update even on the CPU (tests compare the two).
    composed_only: bool,
}

impl AdamW {
    pub fn new(named: HashMap<String, Var>, config: AdamWConfig) -> Result<Self> {
        let mut params: Vec<(String, Var)> = named.into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        // Two sets: the CPU update writes `m` and `v` in place, so they must not share storage.
        let zeros = || {
            params
                .iter()
                .map(|(_, v)| v.as_tensor().zeros_like())
                .collect::<Result<Vec<_>>>()
        };
        let (m, v) = (zeros()?, zeros()?);
        Ok(AdamW {
            bounds: vec![MomentBound::ZERO; params.len()],
            params,
            m,
            v,
            step: 0,
            config,
            composed_only: false,
        })
    }

    /// The global L2 norm of the gradients.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        if self.fused_on_cpu() {
            let mut total = 0.0;
            for (_, var) in &self.params {
                if let Some(g) = grads.get(var.as_tensor()) {
                    total += with_values(g, |g: &[f32]| Ok(sum_of_squares(g)))?;
                }
            }
            return Ok(total.sqrt());
        }
        // One read for all parameters: on a GPU each read waits for the device to drain.
        let mut sums = Vec::with_capacity(self.params.len());
        for (_, var) in &self.params {
            if let Some(g) = grads.get(var.as_tensor()) {
                sums.push(g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?);
            }
        }
        if sums.is_empty() {
            return Ok(0.0);
        }
        let total = Tensor::stack(&sums, 0)?.sum_all()?.to_scalar::<f64>()?;
        Ok(total.sqrt())
    }

    /// One update; gradients are scaled down first so their global norm is at most `clip`.
    /// Returns the norm before clipping, or NaN when the gradients or the updated weights are
    /// not finite: then nothing is changed, so the last good weights survive a diverged step.
    pub fn step(&mut self, grads: &GradStore, lr: f64, clip: f64) -> Result<f64> {
        let norm = self.grad_norm(grads)?;
        if !norm.is_finite() {
            return Ok(f64::NAN);
        }
        let scale = if norm > clip && norm > 0.0 {
            clip / norm
        } else {
            1.0
        };
        let c = self.config;
        let t = (self.step + 1) as i32;
        let correction1 = 1.0 - c.beta1.powi(t);
        let correction2 = 1.0 - c.beta2.powi(t);
        // As the tensor ops convert them: each `tensor * x`, `/ x`, `+ x` is candle's affine
        // `v * mul + add` with `mul` and `add` rounded to f32.
        let constants = Constants {
            beta1: c.beta1 as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            scale: scale as f32,
            inv_correction1: (1.0 / correction1) as f32,
            inv_correction2: (1.0 / correction2) as f32,
            eps: c.eps as f32,
            lr: lr as f32,
            decay: (1.0 - lr * c.weight_decay) as f32,
        };
        if self.fused_on_cpu() {
            // Each scaled gradient is at most the scaled norm.
            let g_max = norm * scale;
            if self.provably_finite(grads, &constants, g_max)? {
                return self.step_cpu_in_place(grads, &constants, norm);
            }
            return self.step_cpu(grads, &constants, norm);
        }
        #[cfg(feature = "cuda")]
        if let Some(dev) = self.fused_cuda_device() {
            return self.step_cuda(grads, &constants.in_kernel_order(), &dev, norm);
        }
        let mut updates = Vec::with_capacity(self.params.len());
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Detached: a variable's gradient can carry the autograd graph that computed it (a
            // matmul's backward multiplies by the other, tracked, operand), and the moments live
            // across steps, so an attached `g` chained every step's gradients into `m` and `v`:
            // about 33 MB kept per step at the reference size (issue 11).
            let g = (g.detach() * scale)?;
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / correction1)? / ((&v / correction2)?.sqrt()? + c.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
            let new = (decayed - (update * lr)?)?.detach();
            let total = new.sum_all()?.to_dtype(candle_core::DType::F64)?;
            if !total.to_scalar::<f64>()?.is_finite() {
                return Ok(f64::NAN);
            }
            updates.push((i, new, m.detach(), v.detach()));
        }
        self.commit(updates, norm)
    }

    /// Writes a whole step's new weights and moments (only once every one is known finite).
    fn commit(&mut self, updates: Vec<(usize, Tensor, Tensor, Tensor)>, norm: f64) -> Result<f64> {
        for (i, new, m, v) in updates {
            self.params[i].1.set(&new)?;
            self.m[i] = m;
            self.v[i] = v;
            self.bounds[i] = MomentBound::UNKNOWN;
        }
        self.step += 1;
        Ok(norm)
    }

    /// Whether the one-pass CPU update and norm apply (every parameter f32 on the CPU).
    fn fused_on_cpu(&self) -> bool {
        !self.composed_only
            && self
                .params
                .iter()
                .all(|(_, var)| var.device().is_cpu() && var.dtype() == candle_core::DType::F32)
    }

    /// The GPU when every parameter is f32 on one CUDA device.
    #[cfg(feature = "cuda")]
    fn fused_cuda_device(&self) -> Option<candle_core::CudaDevice> {
        if self.composed_only {
            return None;
        }
        let (_, first) = self.params.first()?;
        let candle_core::Device::Cuda(dev) = first.device() else {
            return None;
        };
        self.params
            .iter()
            .all(|(_, var)| {
                var.dtype() == candle_core::DType::F32 && var.device().same_device(first.device())
            })
            .then(|| dev.clone())
    }

    /// [`AdamW::step`] on CUDA: one kernel per parameter (`model/adamw.cu`) and one read of a
    /// flag at the end, instead of a dozen ops and a read per parameter.
    #[cfg(feature = "cuda")]
    fn step_cuda(
        &mut self,
        grads: &GradStore,
        scalars: &crate::model::AdamWScalars,
        dev: &candle_core::CudaDevice,
        norm: f64,
    ) -> Result<f64> {
        let flag = crate::model::NonFiniteFlag::new(dev)?;
        let mut updates = Vec::with_capacity(self.params.len());
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let [w, m, v] = crate::model::adamw_update(
                [var.as_tensor(), &g.detach(), &self.m[i], &self.v[i]],
                scalars,
                &flag,
            )?;
            updates.push((i, w, m, v));
        }
        if flag.is_set()? {
            return Ok(f64::NAN);
        }
        self.commit(updates, norm)
    }

    /// [`AdamW::step`] on the CPU in one pass per parameter: the composed tensor ops above make
    /// a dozen full-size temporaries per parameter: ~49 ms a step at the reference size, ~25 ms
    /// with this pass (measured under load). The same arithmetic, in the same order, in f32.
    /// The new weights and moments are copies, updated by the in-place pass and committed once
    /// every weight is known finite: the path for a step [`AdamW::provably_finite`] cannot vouch
    /// for.
    fn step_cpu(&mut self, grads: &GradStore, k: &Constants, norm: f64) -> Result<f64> {
        let mut updates = Vec::with_capacity(self.params.len());
        let mut bounds = Vec::with_capacity(self.params.len());
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Copies of the current values, updated in place: the step commits them only once
            // every weight of every parameter is known finite.
            let copy = |t: &Tensor| with_values(t, |values: &[f32]| Ok(values.to_vec()));
            let (mut new_w, mut new_m, mut new_v) =
                (copy(var.as_tensor())?, copy(&self.m[i])?, copy(&self.v[i])?);
            let pass = with_values(g, |g: &[f32]| {
                Ok(adamw_in_place(
                    crate::model::isa::chosen(),
                    k,
                    g,
                    [&mut new_w, &mut new_m, &mut new_v],
                ))
            })?;
            if !pass.finite {
                return Ok(f64::NAN);
            }
            let shape = var.shape().clone();
            let device = var.device().clone();
            updates.push((
                i,
                Tensor::from_vec(new_w, shape.clone(), &device)?,
                Tensor::from_vec(new_m, shape.clone(), &device)?,
                Tensor::from_vec(new_v, shape, &device)?,
            ));
            bounds.push((i, pass.bound));
        }
        let norm = self.commit(updates, norm)?;
        for (i, bound) in bounds {
            self.bounds[i] = bound;
        }
        Ok(norm)
    }

    /// Whether this step's update provably leaves every weight finite, so that it may write the
    /// weights and moments in place (nothing to undo): from the largest |weight| (read now:
    /// anything may have set a variable since the last step), the largest |m| and the soundness
    /// of `v` kept from the last update, and the largest scaled gradient, `g_max`.
    ///
    /// Per value, with every scalar as the pass rounds it: `|m'| <= beta1 m_max + (1 - beta1)
    /// g_max`; the denominator `sqrt(v' / c2) + eps` is at least `eps` (`v' >= 0`, possibly
    /// infinite, which makes the update 0); so `|w'| <= |decay| w_max + lr |m'| / (c1 eps)`.
    /// Each rounding moves a value by a relative 2^-24; the bound must stay below 1e30, eight
    /// orders of magnitude inside f32. A typical step is about 1e6 (lr 1e-3, c1 up to 10, eps
    /// 1e-8); a step that fails (a corrupt moment, an absurd learning rate) takes the buffered
    /// path, which checks every new weight.
    fn provably_finite(&self, grads: &GradStore, k: &Constants, g_max: f64) -> Result<bool> {
        let scalars = [
            k.beta1,
            k.one_minus_beta1,
            k.beta2,
            k.one_minus_beta2,
            k.scale,
        ];
        let sane = scalars.iter().all(|&c| (0.0..=1.0).contains(&c))
            && k.one_minus_beta2 > 0.0
            && k.eps > 0.0
            && k.inv_correction1 > 0.0
            && k.inv_correction2 > 0.0
            && [k.inv_correction1, k.inv_correction2, k.lr, k.decay]
                .iter()
                .all(|c| c.is_finite());
        if !sane || !g_max.is_finite() {
            return Ok(false);
        }
        let (mut written, mut read) = (Vec::new(), Vec::new());
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Nothing to bound or write (and an empty storage has no address of its own).
            if var.elem_count() == 0 {
                continue;
            }
            let bound = self.bounds[i];
            if !bound.v_sound || !bound.m_max.is_finite() {
                return Ok(false);
            }
            let w_max = with_values(var.as_tensor(), |w: &[f32]| Ok(max_abs(w)))?;
            if !w_max.is_finite() {
                return Ok(false);
            }
            let m_new =
                f64::from(bound.m_max) * f64::from(k.beta1) + g_max * f64::from(k.one_minus_beta1);
            let update = m_new * f64::from(k.inv_correction1) / f64::from(k.eps);
            let w_new =
                f64::from(w_max) * f64::from(k.decay).abs() + update * f64::from(k.lr).abs();
            // The update itself too: an infinite one times a learning rate of 0 is NaN.
            if [update, w_new].iter().any(|x| x.is_nan() || *x >= 1e30) {
                return Ok(false);
            }
            written.extend([
                storage_address(var.as_tensor())?,
                storage_address(&self.m[i])?,
                storage_address(&self.v[i])?,
            ]);
            read.push(storage_address(g)?);
        }
        // Written in place under one another's locks: no storage may be written twice or be
        // both written and read (gradients may share storage: both biases get one sum's).
        let count = written.len();
        written.sort_unstable();
        written.dedup();
        Ok(written.len() == count && read.iter().all(|r| written.binary_search(r).is_err()))
    }

    /// [`AdamW::step_cpu`] writing the weights and moments in place, for a step that
    /// [`AdamW::provably_finite`] vouched for: no new buffers (three per parameter, 48 MB a step
    /// at the reference size, then the weights copied again by `Var::set`), so about 9 reads and
    /// writes per value instead of 13.
    fn step_cpu_in_place(&mut self, grads: &GradStore, k: &Constants, norm: f64) -> Result<f64> {
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let pass = with_values_mut(var.as_tensor(), |w| {
                with_values_mut(&self.m[i], |m| {
                    with_values_mut(&self.v[i], |v| {
                        with_values(g, |g: &[f32]| {
                            Ok(adamw_in_place(crate::model::isa::chosen(), k, g, [w, m, v]))
                        })
                    })
                })
            })?;
            debug_assert!(pass.finite, "AdamW: a weight overflowed a proven bound");
            self.bounds[i] = pass.bound;
        }
        self.step += 1;
        Ok(norm)
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`) for `optimizer.safetensors`.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`]; names and shapes must match.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (i, (name, var)) in self.params.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let t = tensors.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state has no tensor `{key}`"))
                })?;
                if t.dims() != var.dims() {
                    candle_core::bail!(
                        "optimizer tensor `{key}` has shape {:?}, the model needs {:?}",
                        t.dims(),
                        var.dims()
                    );
                }
                // A copy of its own: the CPU update writes the moments in place.
                *slot = t
                    .to_device(var.device())?
                    .to_dtype(var.dtype())?
                    .contiguous()?
                    .copy()?;
            }
            self.bounds[i] = if self.fused_on_cpu() {
                with_values(&self.m[i], |m: &[f32]| {
                    with_values(&self.v[i], |v: &[f32]| Ok(MomentBound::of(m, v)))
                })?
            } else {
                MomentBound::UNKNOWN
            };
        }
        self.step = step;
        Ok(())
    }
}

/// In f64, in parallel chunks: no full-size temporary, unlike `sqr()?.sum_all()`. The chunk
/// sums are added in chunk order (rayon's own reduction tree depends on scheduling), so a run and
/// its resumed copy clip by the same norm.
fn sum_of_squares(values: &[f32]) -> f64 {
    let chunk_sums: Vec<f64> = values
        .par_chunks(1 << 14)
        .map(|chunk| chunk.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .collect();
    chunk_sums.iter().sum()
}

/// One step's scalars, rounded to f32 as the tensor path rounds them.
struct Constants {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    scale: f32,
    inv_correction1: f32,
    inv_correction2: f32,
    eps: f32,
    lr: f32,
    decay: f32,
}

impl Constants {
    /// The scalars as `model/adamw.cu`'s `adamw` takes them.
    #[cfg(feature = "cuda")]
    fn in_kernel_order(&self) -> crate::model::AdamWScalars {
        [
            self.beta1,
            self.one_minus_beta1,
            self.beta2,
            self.one_minus_beta2,
            self.scale,
            self.inv_correction1,
            self.inv_correction2,
            self.eps,
            self.lr,
            self.decay,
        ]
    }
}

/// candle's affine map, `+ 0.0` included (it turns -0.0 into 0.0), so both paths agree bit for bit.
#[inline(always)]
fn affine(v: f32, mul: f32, add: f32) -> f32 {
    v * mul + add
}

/// One value's update: `(w, g, m, v)` to `(w', m', v')`, as the tensor ops compute it.
#[inline(always)]
fn update_one(k: &Constants, w: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
    let g = affine(g, k.scale, 0.0);
    let m = affine(m, k.beta1, 0.0) + affine(g, k.one_minus_beta1, 0.0);
    let v = affine(v, k.beta2, 0.0) + affine(g * g, k.one_minus_beta2, 0.0);
    let denominator = affine(affine(v, k.inv_correction2, 0.0).sqrt(), 1.0, k.eps);
    let update = affine(m, k.inv_correction1, 0.0) / denominator;
    let w = affine(w, k.decay, 0.0) - affine(update, k.lr, 0.0);
    (w, m, v)
}

/// What the CPU update knows of a parameter's moments, enough to bound the next update: the
/// largest |m| (NaN if any m is not finite) and whether every v is finite and at least 0.
#[derive(Clone, Copy, Debug, PartialEq)]
struct MomentBound {
    m_max: f32,
    v_sound: bool,
}

impl MomentBound {
    const ZERO: MomentBound = MomentBound {
        m_max: 0.0,
        v_sound: true,
    };
    const UNKNOWN: MomentBound = MomentBound {
        m_max: f32::NAN,
        v_sound: false,
    };

    fn of(m: &[f32], v: &[f32]) -> MomentBound {
        MomentBound {
            m_max: max_abs(m),
            v_sound: max_bits(v, f32::to_bits) < INFINITY_BITS,
        }
    }
}

/// The bits of +infinity: a non-negative f32's bits order as its values do, and every bit
/// pattern above this one is a NaN; a negative value's bits are above it too.
const INFINITY_BITS: u32 = 0x7f80_0000;

/// The bits of |x|.
#[inline(always)]
fn abs_bits(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// The value of the largest [`abs_bits`], NaN when it is not finite.
fn finite_or_nan(abs_bits: u32) -> f32 {
    if abs_bits < INFINITY_BITS {
        f32::from_bits(abs_bits)
    } else {
        f32::NAN
    }
}

/// The largest |value|, NaN if any value is not finite: a maximum of bit patterns, which
/// vectorises (a float maximum with a NaN test per value ran scalar).
fn max_abs(values: &[f32]) -> f32 {
    finite_or_nan(max_bits(values, abs_bits))
}

/// The largest `bits(value)`, 0 for no values, in parallel chunks.
fn max_bits(values: &[f32], bits: impl Fn(f32) -> u32 + Sync) -> u32 {
    values
        .par_chunks(CHUNK)
        .map(|chunk| chunk.iter().fold(0, |max, &v| max.max(bits(v))))
        .reduce(|| 0, u32::max)
}

/// A pass over one parameter: whether every new weight is finite, and the new moments' bound.
#[derive(Clone, Copy)]
struct Pass {
    finite: bool,
    bound: MomentBound,
}

const CHUNK: usize = 1 << 14;

/// The largest bits of a chunk's new `|w|`, `|m|` and `v`: [`Pass`] in integer maxima, which
/// vectorise.
#[derive(Clone, Copy, Default)]
struct Accumulator {
    w: u32,
    m: u32,
    v: u32,
}

impl Accumulator {
    #[inline(always)]
    fn add(&mut self, w: f32, m: f32, v: f32) {
        self.w = self.w.max(abs_bits(w));
        self.m = self.m.max(abs_bits(m));
        self.v = self.v.max(v.to_bits());
    }

    fn merge(self, other: Accumulator) -> Accumulator {
        Accumulator {
            w: self.w.max(other.w),
            m: self.m.max(other.m),
            v: self.v.max(other.v),
        }
    }

    fn pass(self) -> Pass {
        Pass {
            finite: self.w < INFINITY_BITS,
            bound: MomentBound {
                m_max: finite_or_nan(self.m),
                v_sound: self.v < INFINITY_BITS,
            },
        }
    }
}

/// The update of `[w, m, v]` in place by `g`, in parallel chunks on `isa`'s vectors.
fn adamw_in_place(
    isa: crate::model::isa::Isa,
    k: &Constants,
    g: &[f32],
    [w, m, v]: [&mut [f32]; 3],
) -> Pass {
    w.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .enumerate()
        .map(|(c, ((w, m), v))| chunk_in_place(isa, k, &g[c * CHUNK..][..w.len()], [w, m, v]))
        .reduce(Accumulator::default, Accumulator::merge)
        .pass()
}

/// One chunk on the widest vectors `isa` allows: the loop is plain Rust, which the compiler
/// vectorises only as wide as the features it may assume (SSE2 by default). The arithmetic is
/// the same IEEE operations at any width, so the bits are too.
fn chunk_in_place(
    isa: crate::model::isa::Isa,
    k: &Constants,
    g: &[f32],
    wmv: [&mut [f32]; 3],
) -> Accumulator {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `chosen` and `available` name only instruction sets this CPU has.
        crate::model::isa::Isa::Avx512 => return unsafe { x86::in_place_avx512(k, g, wmv) },
        crate::model::isa::Isa::Avx2 => return unsafe { x86::in_place_avx2(k, g, wmv) },
        crate::model::isa::Isa::Portable => {}
    }
    let _ = isa;
    chunk_in_place_body(k, g, wmv)
}

#[inline(always)]
fn chunk_in_place_body(k: &Constants, g: &[f32], [w, m, v]: [&mut [f32]; 3]) -> Accumulator {
    let n = w.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    let mut acc = Accumulator::default();
    for j in 0..n {
        let (wj, mj, vj) = update_one(k, w[j], g[j], m[j], v[j]);
        acc.add(wj, mj, vj);
        w[j] = wj;
        m[j] = mj;
        v[j] = vj;
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Accumulator, Constants, chunk_in_place_body};

    /// # Safety
    /// AVX-512F present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn in_place_avx512(k: &Constants, g: &[f32], wmv: [&mut [f32]; 3]) -> Accumulator {
        chunk_in_place_body(k, g, wmv)
    }

    /// # Safety
    /// AVX2 present.
    #[target_feature(enable = "avx2")]
    pub unsafe fn in_place_avx2(k: &Constants, g: &[f32], wmv: [&mut [f32]; 3]) -> Accumulator {
        chunk_in_place_body(k, g, wmv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn params(seed: u64) -> HashMap<String, Var> {
        let mut rng = crate::rng::Rng::new(seed);
        let mut named = HashMap::new();
        for (name, n) in [("a", 70_000usize), ("b", 33), ("c", 1)] {
            let values: Vec<f32> = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
            let var = Var::from_vec(values, n, &Device::Cpu).unwrap();
            named.insert(name.to_string(), var);
        }
        named
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    #[test]
    fn the_cpu_pass_is_the_tensor_path_bit_for_bit() {
        let mut runs = Vec::new();
        // The tensor ops; the CPU pass in place; the CPU pass on copies (the path of a step the
        // bound cannot vouch for, forced here by forgetting the moments' bounds).
        for (composed_only, buffered) in [(true, false), (false, false), (false, true)] {
            let named = params(5);
            let mut opt = AdamW::new(named.clone(), AdamWConfig::default()).unwrap();
            opt.composed_only = composed_only;
            for step in 0..4 {
                if buffered {
                    opt.bounds.fill(MomentBound::UNKNOWN);
                }
                // A loss whose gradient is not trivial. Unclipped: the two paths sum the norm
                // differently (f64 here, f32 in candle), so a clip would scale by different bits.
                let loss = named
                    .values()
                    .map(|v| (v.as_tensor().sin().unwrap() * (3.0 + step as f64)).unwrap())
                    .map(|t| t.sqr().unwrap().sum_all().unwrap())
                    .reduce(|a, b| (a + b).unwrap())
                    .unwrap();
                let grads = loss.backward().unwrap();
                assert!(opt.step(&grads, 1e-2, 1e9).unwrap().is_finite());
            }
            let mut names: Vec<&String> = named.keys().collect();
            names.sort();
            let state = opt.state_tensors();
            runs.push(
                names
                    .iter()
                    .flat_map(|n| {
                        [
                            bits(named[*n].as_tensor()),
                            bits(&state[&format!("m.{n}")]),
                            bits(&state[&format!("v.{n}")]),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(runs[0], runs[1]);
        assert_eq!(runs[0], runs[2]);
    }

    #[test]
    fn both_paths_measure_the_same_gradient_norm() {
        let named = params(3);
        let loss = named
            .values()
            .map(|v| v.as_tensor().sqr().unwrap().sum_all().unwrap())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let grads = loss.backward().unwrap();
        let mut opt = AdamW::new(named, AdamWConfig::default()).unwrap();
        let fast = opt.grad_norm(&grads).unwrap();
        opt.composed_only = true;
        let composed = opt.grad_norm(&grads).unwrap();
        assert!(fast > 1.0);
        assert!(
            (fast - composed).abs() / composed < 1e-6,
            "{fast} vs {composed}"
        );
    }

    #[test]
    fn a_non_finite_result_changes_nothing() {
        let named = params(9);
        let before: Vec<Vec<u32>> = ["a", "b", "c"].map(|n| bits(named[n].as_tensor())).to_vec();
        let mut opt = AdamW::new(named.clone(), AdamWConfig::default()).unwrap();
        let loss = named["b"].as_tensor().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        // A learning rate beyond f32: the new weights overflow.
        assert!(opt.step(&grads, 1e39, 1.0).unwrap().is_nan());
        let after: Vec<Vec<u32>> = ["a", "b", "c"].map(|n| bits(named[n].as_tensor())).to_vec();
        assert_eq!(before, after);
        assert_eq!(opt.step, 0);
    }

    fn quadratic_grads(named: &HashMap<String, Var>, step: usize) -> GradStore {
        named
            .values()
            .map(|v| (v.as_tensor().sin().unwrap() * (3.0 + step as f64)).unwrap())
            .map(|t| t.sqr().unwrap().sum_all().unwrap())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap()
            .backward()
            .unwrap()
    }

    #[test]
    fn a_provably_finite_step_writes_in_place_and_keeps_the_bits() {
        let named = params(11);
        let mut opt = AdamW::new(named.clone(), AdamWConfig::default()).unwrap();
        let addresses = |opt: &AdamW| -> Vec<usize> {
            (0..opt.params.len())
                .flat_map(|i| [opt.params[i].1.as_tensor(), &opt.m[i], &opt.v[i]])
                .map(|t| storage_address(t).unwrap())
                .collect()
        };
        let before = addresses(&opt);
        let mut composed = AdamW::new(params(11), AdamWConfig::default()).unwrap();
        composed.composed_only = true;
        for step in 0..3 {
            assert!(
                opt.step(&quadratic_grads(&named, step), 1e-2, 1e9)
                    .unwrap()
                    .is_finite()
            );
            let others = composed
                .params
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            composed
                .step(&quadratic_grads(&others, step), 1e-2, 1e9)
                .unwrap();
        }
        // In place: the same storage as at the start, every step.
        assert_eq!(before, addresses(&opt));
        for i in 0..opt.params.len() {
            for (ours, theirs) in [
                (
                    opt.params[i].1.as_tensor(),
                    composed.params[i].1.as_tensor(),
                ),
                (&opt.m[i], &composed.m[i]),
                (&opt.v[i], &composed.v[i]),
            ] {
                assert_eq!(bits(ours), bits(theirs));
            }
        }
    }

    #[test]
    fn every_instruction_set_updates_with_the_same_bits() {
        let k = Constants {
            scale: 0.75,
            inv_correction1: 3.5,
            inv_correction2: 1.7,
            lr: 3e-3,
            decay: 0.99997,
            ..constants_for_test()
        };
        let mut rng = crate::rng::Rng::new(4);
        let n = CHUNK + 37;
        let mut draw = |scale: f32| -> Vec<f32> {
            (0..n)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * scale)
                .collect()
        };
        let (w, g, m) = (draw(1.0), draw(5.0), draw(0.5));
        let v: Vec<f32> = draw(0.3).iter().map(|x| x * x).collect();
        let mut runs = Vec::new();
        for isa in crate::model::isa::Isa::available() {
            let (mut w2, mut m2, mut v2) = (w.clone(), m.clone(), v.clone());
            let pass = adamw_in_place(isa, &k, &g, [&mut w2, &mut m2, &mut v2]);
            // Value by value, unvectorised and unchunked: what every chunk of every width must
            // give.
            let (mut nw, mut nm, mut nv) = (Vec::new(), Vec::new(), Vec::new());
            for j in 0..n {
                let (wj, mj, vj) = update_one(&k, w[j], g[j], m[j], v[j]);
                nw.push(wj);
                nm.push(mj);
                nv.push(vj);
            }
            assert_eq!(
                (w2.clone(), m2.clone(), v2.clone()),
                (nw, nm, nv),
                "{isa:?}"
            );
            assert_eq!(pass.bound, MomentBound::of(&m2, &v2));
            assert!(pass.finite && pass.bound.v_sound);
            assert_eq!(pass.bound.m_max, max_abs(&m2));
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            runs.push([bits(&w2), bits(&m2), bits(&v2)]);
        }
        assert!(runs.windows(2).all(|pair| pair[0] == pair[1]));
    }

    #[test]
    fn the_bounds_see_every_non_finite_or_negative_value() {
        assert_eq!(max_abs(&[0.5, -3.0, 2.0]), 3.0);
        assert!(max_abs(&[1.0, f32::NAN]).is_nan());
        assert!(max_abs(&[f32::NEG_INFINITY, 1.0]).is_nan());
        assert_eq!(max_abs(&[]), 0.0);
        let sound = MomentBound::of(&[0.25, -0.5], &[0.0, 1e30]);
        assert_eq!(
            sound,
            MomentBound {
                m_max: 0.5,
                v_sound: true
            }
        );
        for bad_v in [-1e-30, f32::NAN, f32::INFINITY] {
            assert!(!MomentBound::of(&[0.0], &[1.0, bad_v]).v_sound, "{bad_v}");
        }
        assert!(MomentBound::of(&[f32::NAN], &[1.0]).m_max.is_nan());
    }

    #[test]
    fn a_corrupt_saved_moment_is_refused_without_touching_the_weights() {
        let named = params(12);
        let mut opt = AdamW::new(named.clone(), AdamWConfig::default()).unwrap();
        let mut state = opt.state_tensors();
        // A negative second moment, as a damaged optimizer file could hold: sqrt gives NaN.
        let n = named["a"].elem_count();
        let mut bad = vec![0.5f32; n];
        bad[17] = -4.0;
        state.insert(
            "v.a".into(),
            Tensor::from_vec(bad, n, &Device::Cpu).unwrap(),
        );
        opt.load_state(&state, 5).unwrap();
        let grads = quadratic_grads(&named, 0);
        assert!(
            !opt.provably_finite(&grads, &constants_for_test(), 1.0)
                .unwrap()
        );
        let before = bits(named["a"].as_tensor());
        let m_before = bits(&opt.m[0]);
        // The loaded moments are copies: the caller's tensors do not change either way.
        assert!(opt.step(&grads, 1e-3, 1.0).unwrap().is_nan());
        assert_eq!(before, bits(named["a"].as_tensor()));
        assert_eq!(m_before, bits(&opt.m[0]));
        assert_eq!(opt.step, 5);
    }

    #[test]
    fn an_empty_parameter_does_not_stop_the_in_place_update() {
        let mut named = params(13);
        named.insert(
            "empty".into(),
            Var::from_vec(Vec::<f32>::new(), 0, &Device::Cpu).unwrap(),
        );
        let mut opt = AdamW::new(named.clone(), AdamWConfig::default()).unwrap();
        let grads = quadratic_grads(&named, 1);
        assert!(
            opt.provably_finite(&grads, &constants_for_test(), 1.0)
                .unwrap()
        );
        let m_address = storage_address(&opt.m[0]).unwrap();
        assert!(opt.step(&grads, 1e-3, 1.0).unwrap().is_finite());
        assert_eq!(m_address, storage_address(&opt.m[0]).unwrap());
    }

    fn constants_for_test() -> Constants {
        Constants {
            beta1: 0.9,
            one_minus_beta1: 0.1,
            beta2: 0.999,
            one_minus_beta2: 0.001,
            scale: 1.0,
            inv_correction1: 2.0,
            inv_correction2: 2.0,
            eps: 1e-8,
            lr: 1e-3,
            decay: 0.99999,
        }
    }
}
