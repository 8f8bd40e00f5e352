//! Sampling in a job ([`super::samples::Sampling::Job`]): the weights are copied to the CPU at
//! the step the samples are for, and a thread makes the samples from that copy while training
//! goes on. The training thread writes the files when the job is done, between steps.

use std::thread::JoinHandle;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::samples::make_samples;
use crate::model::{ModelConfig, MusicModel};
use crate::performance::Performance;

type Made = Result<Vec<(&'static str, Performance)>, String>;

pub struct SampleJob {
    step: u64,
    started: Instant,
    thread: JoinHandle<Made>,
}

impl SampleJob {
    /// Copies the weights of `varmap` to the CPU and starts sampling them on a thread.
    pub fn start(
        varmap: &VarMap,
        config: &ModelConfig,
        step: u64,
        primer: Option<Performance>,
    ) -> Result<SampleJob, String> {
        let started = Instant::now();
        let weights = snapshot(varmap).map_err(|e| format!("copying the weights: {e}"))?;
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name("echoai-sampler".into())
            .spawn(move || {
                let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
                let model = MusicModel::new(&config, vb).map_err(|e| e.to_string())?;
                make_samples(&model, step, primer.as_ref())
            })
            .map_err(|e| format!("cannot start the sampler: {e}"))?;
        Ok(SampleJob {
            step,
            started,
            thread,
        })
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the samples: `(step, seconds since start, samples)`.
    pub fn join(self) -> (u64, f64, Made) {
        let made = self
            .thread
            .join()
            .unwrap_or_else(|_| Err("the sampler stopped with a panic".into()));
        (self.step, self.started.elapsed().as_secs_f64(), made)
    }
}

/// Deep CPU copies: the optimizer updates the variables in place while the job reads its copy.
fn snapshot(varmap: &VarMap) -> candle_core::Result<std::collections::HashMap<String, Tensor>> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned variable map".into()))?;
    vars.iter()
        .map(|(name, var)| {
            let t = var.as_tensor();
            let copy = if t.device().is_cpu() {
                t.copy()?
            } else {
                t.to_device(&Device::Cpu)?
            };
            Ok((name.clone(), copy))
        })
        .collect()
}
