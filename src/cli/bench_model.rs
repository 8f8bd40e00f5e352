//! `echoai bench train` and `echoai bench generate`: the reference model of DESIGN.md
//! (Embedding(390, 256) -> 2 x LSTM(512) -> Linear(390)) against `candle_nn::rnn::LSTM`.

use std::time::Instant;

use super::bench::median;

use candle_core::{DType, Device, Tensor};
use candle_nn::rnn::{LSTMConfig, RNN};
use candle_nn::{Module, VarBuilder, VarMap};

use crate::model::team_waits::WaitTotals;
use crate::model::{
    ModelConfig, ModelKind, MusicModel, Recurrence, Stepper, TrainingLoss, WeightPrecision,
};
use crate::optim::{AdamW, AdamWConfig};
use crate::rng::Rng;
use crate::tokenizer::VOCAB_SIZE;

pub struct Sizes {
    pub batch: usize,
    pub seq: usize,
    pub embed: usize,
    pub hidden: usize,
}

/// The most likely id: generation benchmarks sample greedily so both sides do the same work.
fn greedy(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

fn random_ids(n: usize, rng: &mut Rng) -> Vec<u32> {
    (0..n).map(|_| rng.below(VOCAB_SIZE) as u32).collect()
}

/// The candle_nn baseline: the same shapes with candle_nn's LSTM layers.
struct Baseline {
    embedding: candle_nn::Embedding,
    layers: Vec<candle_nn::rnn::LSTM>,
    output: candle_nn::Linear,
}

impl Baseline {
    fn new(s: &Sizes, vb: VarBuilder) -> candle_core::Result<Self> {
        let layers = (0..2)
            .map(|l| {
                let config = LSTMConfig {
                    layer_idx: l,
                    ..Default::default()
                };
                let input = if l == 0 { s.embed } else { s.hidden };
                candle_nn::rnn::lstm(input, s.hidden, config, vb.pp("lstm"))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Baseline {
            embedding: candle_nn::embedding(VOCAB_SIZE, s.embed, vb.pp("embedding"))?,
            layers,
            output: candle_nn::linear(s.hidden, VOCAB_SIZE, vb.pp("output"))?,
        })
    }

    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.embedding.forward(ids)?;
        for layer in &self.layers {
            let states = layer.seq(&x)?;
            x = layer.states_to_tensor(&states)?;
        }
        self.output.forward(&x)
    }
}

/// What one row measured: median tokens/s, and with `phases` the median milliseconds of the
/// forward pass with the loss, the backward pass and the optimizer step.
struct Timing {
    tokens_per_s: f64,
    phases_ms: Option<[f64; 3]>,
    /// With `phases`: the team barrier waits of all timed steps.
    waits: Option<WaitTotals>,
}

/// Median training tokens/s of one model over `iters` timed steps (after one warm-up step). On
/// an accelerator each step ends with a synchronisation, so a step's time is its whole work.
/// With `phases` it also synchronises between the phases, to time each; that removes the
/// overlap of one phase's launches with the last one's work, so its tokens/s can be lower.
fn time_training(
    s: &Sizes,
    iters: usize,
    device: &Device,
    varmap: &VarMap,
    phases: bool,
    loss_of: &dyn Fn(&Tensor, &Tensor) -> candle_core::Result<TrainingLoss>,
) -> candle_core::Result<Timing> {
    let mut rng = Rng::new(7);
    let named = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned".into()))?
        .clone();
    let mut opt = AdamW::new(named, AdamWConfig::default())?;
    let mut times = Vec::new();
    let mut split: [Vec<f64>; 3] = Default::default();
    let phase_end = |from: &mut Instant| -> candle_core::Result<f64> {
        device.synchronize()?;
        let ms = from.elapsed().as_secs_f64() * 1e3;
        *from = Instant::now();
        Ok(ms)
    };
    crate::model::team_waits::keep(phases);
    let mut waits_from = None;
    for i in 0..iters + 1 {
        if i == 1 && phases {
            waits_from = Some(crate::model::team_waits::totals());
        }
        let ids = random_ids(s.batch * (s.seq + 1), &mut rng);
        let inputs: Vec<u32> = ids
            .chunks(s.seq + 1)
            .flat_map(|c| c[..s.seq].to_vec())
            .collect();
        let targets: Vec<u32> = ids
            .chunks(s.seq + 1)
            .flat_map(|c| c[1..].to_vec())
            .collect();
        let t0 = Instant::now();
        let mut phase = t0;
        let inputs = Tensor::from_vec(inputs, (s.batch, s.seq), device)?;
        let targets = Tensor::from_vec(targets, s.batch * s.seq, device)?;
        let loss = loss_of(&inputs, &targets)?;
        let forward = if phases { phase_end(&mut phase)? } else { 0.0 };
        let grads = loss.gradients()?;
        let backward = if phases { phase_end(&mut phase)? } else { 0.0 };
        opt.step(&grads, 1e-3, 3.0)?;
        let optimizer = phase_end(&mut phase)?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
            for (list, ms) in split.iter_mut().zip([forward, backward, optimizer]) {
                list.push(ms);
            }
        }
    }
    let phases_ms = phases.then(|| split.map(median));
    let waits = waits_from.map(|from| crate::model::team_waits::totals().since(from));
    crate::model::team_waits::keep(false);
    Ok(Timing {
        tokens_per_s: (s.batch * s.seq) as f64 / median(times),
        phases_ms,
        waits,
    })
}

/// One line on the team barrier waits of `steps` training steps: their wall time per step and,
/// where known, the part the waiting threads spent off the CPU.
fn describe_waits(waits: WaitTotals, steps: usize) -> String {
    let per_step_ms = waits.wall.as_secs_f64() * 1e3 / steps.max(1) as f64;
    let off_cpu = waits.on_cpu.map_or(String::new(), |on_cpu| {
        let wall = waits.wall.as_secs_f64();
        let off = (wall - on_cpu.as_secs_f64()).max(0.0);
        format!(
            ", {:.0}% of it with the waiting thread off the CPU",
            100.0 * off / wall.max(f64::MIN_POSITIVE)
        )
    });
    format!(
        "team barrier waits {per_step_ms:.2} ms per step (summed over the members, {} waits){off_cpu}",
        waits.waits / steps.max(1) as u64
    )
}

fn reference_config(s: &Sizes, kind: ModelKind) -> ModelConfig {
    ModelConfig {
        kind,
        embed: s.embed,
        hidden: s.hidden,
        layers: 2,
        dropout: 0.0,
        ..ModelConfig::default()
    }
}

/// 2-thread SGEMM throughput on a large square product: the machine's ceiling.
pub fn sgemm_gflops(n: usize) -> f64 {
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let mut times = Vec::new();
    for _ in 0..12 {
        let t0 = Instant::now();
        // SAFETY: a, b and c are n x n row-major buffers, matching the strides given.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        times.push(t0.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / median(times[2..].to_vec()) / 1e9
}

/// Floating-point work of one training token of the reference model (forward + backward).
pub fn flops_per_training_token(s: &Sizes) -> f64 {
    let (e, h, v) = (s.embed as f64, s.hidden as f64, VOCAB_SIZE as f64);
    let forward = 2.0 * (4.0 * h * (e + h) + 4.0 * h * (h + h)) + 2.0 * h * v;
    3.0 * forward
}

/// Which rows `bench train` times besides the fused LSTM.
pub struct TrainRows {
    /// candle_nn's LSTM (CPU only: it is the CPU's baseline).
    pub baseline: bool,
    pub composed: bool,
    /// The lstm-attention model at the same sizes.
    pub attention: bool,
    /// Also time the forward, backward and optimizer phases of each row.
    pub phases: bool,
}

pub fn bench_train(
    s: &Sizes,
    iters: usize,
    rows: TrainRows,
    device: &Device,
) -> anyhow::Result<()> {
    let on_cpu = device.is_cpu();
    let engine = if on_cpu {
        format!(
            "{} threads, {} kernels",
            rayon::current_num_threads(),
            crate::model::isa::chosen().name()
        )
    } else {
        crate::device::describe_with_kernels(device)
    };
    println!(
        "bench train: Embedding({VOCAB_SIZE},{}) -> 2 x LSTM({}) -> Linear({VOCAB_SIZE}), batch {} x {}, {engine}",
        s.embed, s.hidden, s.batch, s.seq,
    );
    // The CPU's ceilings mean nothing for a GPU row.
    let fma = if on_cpu {
        super::bench_fma::fma_peak()
    } else {
        None
    };
    let peak = on_cpu.then(|| sgemm_gflops(1024));
    let flops = flops_per_training_token(s);
    if let Some(fma) = &fma {
        println!(
            "  FMA peak ({}, registers only): {:.1} GFLOP/s",
            fma.isa, fma.gflops
        );
    }
    if let Some(peak) = peak {
        println!(
            "  SGEMM 1024^3 peak: {peak:.1} GFLOP/s{}; one training token is {:.1} MFLOP, so the ceiling is {:.0} tokens/s",
            fma.as_ref().map_or(String::new(), |f| format!(
                " ({:.0}% of the FMA peak)",
                100.0 * peak / f.gflops
            )),
            flops / 1e6,
            peak * 1e9 / flops
        );
    }
    let mut table: Vec<(&str, ModelKind, Recurrence, bool)> =
        vec![("echoai fused LSTM", ModelKind::Lstm, Recurrence::Auto, true)];
    if rows.composed {
        table.push((
            "echoai composed LSTM",
            ModelKind::Lstm,
            Recurrence::Composed,
            true,
        ));
    }
    if rows.attention {
        table.push((
            "echoai lstm-attention",
            ModelKind::LstmAttention,
            Recurrence::Auto,
            true,
        ));
    }
    if rows.baseline && on_cpu {
        table.push((
            "candle_nn::rnn::LSTM",
            ModelKind::Lstm,
            Recurrence::Composed,
            false,
        ));
    }
    let mut lstm_rate = None;
    for (name, kind, recurrence, ours) in table {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let timing = if ours {
            let model = MusicModel::new(&reference_config(s, kind), vb)?;
            time_training(s, iters, device, &varmap, rows.phases, &|ids, targets| {
                // What `echoai train` runs: its own backward pass where it has one.
                match recurrence {
                    Recurrence::Auto => model.training_loss(ids, targets, None),
                    Recurrence::Composed => Ok(TrainingLoss::from_graph(
                        model.loss_with(ids, targets, None, recurrence)?,
                    )),
                }
            })?
        } else {
            let model = Baseline::new(s, vb)?;
            time_training(s, iters, device, &varmap, rows.phases, &|ids, targets| {
                let logits = model.forward(ids)?.reshape((s.batch * s.seq, VOCAB_SIZE))?;
                Ok(TrainingLoss::from_graph(candle_nn::loss::cross_entropy(
                    &logits, targets,
                )?))
            })?
        };
        let tokens_per_s = timing.tokens_per_s;
        // The process's peak so far: each row's model and buffers are freed before the next.
        let memory = crate::memory::peak_resident_bytes().map_or(String::new(), |b| {
            format!(", peak RSS {}", crate::memory::format_bytes(b))
        });
        let of_fma = fma.as_ref().map_or(String::new(), |f| {
            format!(
                ", {:.0}% of the FMA peak",
                100.0 * tokens_per_s * flops / (f.gflops * 1e9)
            )
        });
        let of_sgemm = peak.map_or(String::new(), |p| {
            format!(
                "{:.0}% of the SGEMM ceiling",
                100.0 * tokens_per_s * flops / (p * 1e9)
            )
        });
        let of_attention = match (kind, lstm_rate) {
            // Same sizes and data; the steps differ only by the attention block.
            (ModelKind::LstmAttention, Some(lstm)) => {
                format!(
                    "attention is {:.0}% of the step",
                    100.0 * (1.0 - tokens_per_s / lstm)
                )
            }
            _ => String::new(),
        };
        let details = [of_sgemm, of_attention, of_fma, memory]
            .iter()
            .map(|d| d.trim_start_matches(", "))
            .filter(|d| !d.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        println!("  {name:<24} {tokens_per_s:>8.0} training tokens/s  ({details})");
        if let Some([forward, backward, optimizer]) = timing.phases_ms {
            println!(
                "  {:<24} forward + loss {forward:.2} ms, backward {backward:.2} ms, optimizer {optimizer:.2} ms",
                ""
            );
        }
        if let Some(waits) = timing.waits.filter(|w| w.waits > 0) {
            println!("  {:<24} {}", "", describe_waits(waits, iters));
        }
        if kind == ModelKind::Lstm && recurrence == Recurrence::Auto && ours {
            lstm_rate = Some(tokens_per_s);
        }
    }
    Ok(())
}

pub fn bench_generate(s: &Sizes, events: usize, baseline: bool) -> anyhow::Result<()> {
    println!(
        "bench generate: batch 1, {events} events, Embedding({VOCAB_SIZE},{}) -> 2 x LSTM({}) -> Linear({VOCAB_SIZE})",
        s.embed, s.hidden
    );
    for kind in [ModelKind::Lstm, ModelKind::LstmAttention] {
        let varmap = VarMap::new();
        let weights = {
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            MusicModel::new(&reference_config(s, kind), vb)?;
            crate::model::checkpoint::varmap_tensors(&varmap)
        };
        let model = MusicModel::new(
            &reference_config(s, kind),
            VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
        )?;
        for precision in [WeightPrecision::F32, WeightPrecision::Bf16] {
            let mut stepper = Stepper::new(&model, 1, precision)?;
            let mut id = crate::tokenizer::START as u32;
            let t0 = Instant::now();
            for _ in 0..events {
                id = greedy(stepper.step(&[id])?);
            }
            let rate = events as f64 / t0.elapsed().as_secs_f64();
            let name = format!("{} ({precision:?})", kind.name());
            println!("  echoai {name:<23} {rate:>8.0} events/s");
        }
        let mut state = model.zero_state(1)?;
        let mut id = crate::tokenizer::START as u32;
        let t0 = Instant::now();
        for _ in 0..events {
            let logits = model.step(&Tensor::new(&[id], &Device::Cpu)?, &mut state)?;
            id = greedy(&logits.squeeze(0)?.to_vec1::<f32>()?);
        }
        let rate = events as f64 / t0.elapsed().as_secs_f64();
        let name = format!("{} (candle ops)", kind.name());
        println!("  echoai {name:<23} {rate:>8.0} events/s");
    }
    if baseline {
        let varmap = VarMap::new();
        let weights = {
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            Baseline::new(s, vb)?;
            crate::model::checkpoint::varmap_tensors(&varmap)
        };
        let model = Baseline::new(
            s,
            VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
        )?;
        let mut states: Vec<_> = model
            .layers
            .iter()
            .map(|l| l.zero_state(1))
            .collect::<candle_core::Result<_>>()?;
        let mut id = crate::tokenizer::START as u32;
        let t0 = Instant::now();
        for _ in 0..events {
            let mut x = model
                .embedding
                .forward(&Tensor::new(&[id], &Device::Cpu)?)?;
            for (layer, state) in model.layers.iter().zip(states.iter_mut()) {
                *state = layer.step(&x, state)?;
                x = state.h().clone();
            }
            id = greedy(&model.output.forward(&x)?.squeeze(0)?.to_vec1::<f32>()?);
        }
        let rate = events as f64 / t0.elapsed().as_secs_f64();
        println!("  {:<30} {rate:>8.0} events/s", "candle_nn::rnn::LSTM");
    }
    Ok(())
}
