//! AdamW (Loshchilov & Hutter, 2019) with global-norm gradient clipping, whose moment estimates
//! can be saved and restored so a resumed run continues exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use rayon::prelude::*;

use crate::model::with_values;

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
    pub step: u64,
    config: AdamWConfig,
    /// Runs the tensor-op update even on the CPU (tests compare the two).
    composed_only: bool,
}

impl AdamW {
    pub fn new(named: HashMap<String, Var>, config: AdamWConfig) -> Result<Self> {
        let mut params: Vec<(String, Var)> = named.into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let m = params
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(AdamW {
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
    fn step_cpu(&mut self, grads: &GradStore, k: &Constants, norm: f64) -> Result<f64> {
        let mut updates = Vec::with_capacity(self.params.len());
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let n = var.elem_count();
            let (mut new_w, mut new_m, mut new_v) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            let finite = with_values(var.as_tensor(), |w: &[f32]| {
                with_values(g, |g: &[f32]| {
                    with_values(&self.m[i], |m: &[f32]| {
                        with_values(&self.v[i], |v: &[f32]| {
                            Ok(adamw_chunks(
                                k,
                                [w, g, m, v],
                                [&mut new_w, &mut new_m, &mut new_v],
                            ))
                        })
                    })
                })
            })?;
            if !finite {
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
        }
        self.commit(updates, norm)
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
                *slot = t.to_device(var.device())?.to_dtype(var.dtype())?;
            }
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

/// The update of `[w, g, m, v]` into `[w', m', v']`, in parallel chunks; false if any new
/// weight is not finite.
fn adamw_chunks(k: &Constants, [w, g, m, v]: [&[f32]; 4], out: [&mut [f32]; 3]) -> bool {
    const CHUNK: usize = 1 << 14;
    let [new_w, new_m, new_v] = out;
    new_w
        .par_chunks_mut(CHUNK)
        .zip(new_m.par_chunks_mut(CHUNK))
        .zip(new_v.par_chunks_mut(CHUNK))
        .enumerate()
        .map(|(c, ((nw, nm), nv))| {
            let at = c * CHUNK;
            let mut finite = true;
            for j in 0..nw.len() {
                let gj = affine(g[at + j], k.scale, 0.0);
                let mj = affine(m[at + j], k.beta1, 0.0) + affine(gj, k.one_minus_beta1, 0.0);
                let vj = affine(v[at + j], k.beta2, 0.0) + affine(gj * gj, k.one_minus_beta2, 0.0);
                let denominator = affine(affine(vj, k.inv_correction2, 0.0).sqrt(), 1.0, k.eps);
                let update = affine(mj, k.inv_correction1, 0.0) / denominator;
                let wj = affine(w[at + j], k.decay, 0.0) - affine(update, k.lr, 0.0);
                finite &= wj.is_finite();
                nw[j] = wj;
                nm[j] = mj;
                nv[j] = vj;
            }
            finite
        })
        .reduce(|| true, |a, b| a && b)
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
        for composed_only in [true, false] {
            let named = params(5);
            let mut opt = AdamW::new(named.clone(), AdamWConfig::default()).unwrap();
            opt.composed_only = composed_only;
            for step in 0..4 {
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
}
