//! AdamW (Loshchilov & Hutter, 2019) with global-norm gradient clipping, whose moment estimates
//! can be saved and restored so a resumed run continues exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

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
        })
    }

    /// The global L2 norm of the gradients.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0.0;
        for (_, var) in &self.params {
            if let Some(g) = grads.get(var.as_tensor()) {
                total += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
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
        for (i, new, m, v) in updates {
            self.params[i].1.set(&new)?;
            self.m[i] = m;
            self.v[i] = v;
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
                *slot = t.to_device(var.device())?.to_dtype(var.dtype())?;
            }
        }
        self.step = step;
        Ok(())
    }
}
